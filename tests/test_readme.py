"""The README is the front door: every `python cli.py …` command it shows must parse as written.

(The commands on the real data cannot run here — no real VGG_FACE.t7 or Adience — but a renamed
flag or a removed option would make them fail for the user, and this catches that.)
"""
from __future__ import annotations

import os
import re
import shlex

import pytest

import cli
from tests.conftest import ROOT

README = os.path.join(ROOT, "README.md")


def _readme_commands() -> list[str]:
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```[\w-]*\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)      # shell line continuations
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            line = re.sub(r"^(\w+='[^']*'\s+)+", "", line)   # VAR='…' prefixes (TF_CONFIG)
            if not line.startswith("python cli.py "):
                continue
            line = line.split("#", 1)[0].strip()
            if "[" in line or "|" in line:
                continue    # a synopsis with optional parts, not a command
            commands.append(line)
    return commands


COMMANDS = _readme_commands()


def test_the_readme_shows_every_command():
    shown = {shlex.split(c)[2] for c in COMMANDS}
    assert {"convert", "preprocess", "train", "evaluate", "classify"} <= shown


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    argv = shlex.split(command)[2:]
    args, extra = cli.build_parser().parse_known_args(argv)
    if args.command == "preprocess":
        # Options the command does not know go to Beam, which must know them.
        from pipeline.preprocess.runners import choose_runner
        choose_runner(extra)
    else:
        assert extra == [], f"unknown options in the README: {extra}"
