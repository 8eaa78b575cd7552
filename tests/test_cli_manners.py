"""The command line's manners: --version, quick --help, -v/--verbose, Ctrl-C, the program's name."""
from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import cli
from tests.conftest import CLI, ROOT

COMMANDS = sorted(cli.build_parser()._subparsers._group_actions[0].choices)
# TensorFlow's C++ log lines: "I0000 00:00:… file.cc:NN] …" (absl format), severity I/W/E.
TF_CPP_LINE = re.compile(r"^[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\]", re.M)


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, **kwargs)


def _stderr_without_bars(stderr: str) -> list[str]:
    """stderr lines other than tqdm's redraws of the preprocess bar."""
    return [line for line in re.split(r"[\r\n]+", stderr) if line.strip() and not line.startswith("preprocess:")]


def test_version():
    proc = _run(["--version"])
    assert proc.returncode == 0
    assert proc.stdout == f"gender-classifier {cli.__version__}\n"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_neither_tensorflow_nor_beam(command):
    """--help answers from the parsers alone (a bench line would time it; here: what it imports)."""
    argv = ["--help"] if command is None else [command, "--help"]
    proc = subprocess.run([sys.executable, "-X", "importtime", *CLI[1:], *argv], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and "usage:" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "argparse" in imported                         # the import log was read
    assert not imported & {"tensorflow", "keras", "apache_beam"}   # the seconds-long imports


def test_verbose_before_or_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["-v", "demo"]).verbose
    assert parser.parse_args(["demo", "--verbose"]).verbose
    assert not parser.parse_args(["demo"]).verbose


def test_tensorflow_start_up_messages_only_with_verbose(tmp_path):
    missing = str(tmp_path / "missing.keras")
    quiet = _run(["evaluate", "-m", missing, "-i", str(tmp_path)])
    assert quiet.returncode == 2
    assert quiet.stderr.count("\n") == 1 and quiet.stderr.startswith("error: ")
    loud = _run(["evaluate", "-v", "-m", missing, "-i", str(tmp_path)],
                env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} | {"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert loud.returncode == 2
    assert TF_CPP_LINE.search(loud.stderr), loud.stderr[-2000:]      # -v wins over the environment
    assert loud.stderr.rstrip().endswith(quiet.stderr.rstrip())


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> str:
    from pipeline.synthetic.tree import make_adience_tree

    root = str(tmp_path_factory.mktemp("small_tree"))
    make_adience_tree(root, n_train=16, n_valid=8, image_size=64, seed=1)
    return root


def test_preprocess_output_has_no_worker_log_lines(small_tree, tmp_path):
    """Two worker processes (the default multi_processing mode): nothing but the bar on stderr;
    with -v the workers' own logs arrive through Beam's logging service."""
    quiet = _run(["preprocess", "-i", small_tree, "-o", str(tmp_path / "quiet"), "--direct_num_workers=2"])
    assert quiet.returncode == 0, quiet.stderr
    assert "2 workers" in quiet.stdout
    assert _stderr_without_bars(quiet.stderr) == []
    loud = _run(["preprocess", "-v", "-i", small_tree, "-o", str(tmp_path / "loud"), "--direct_num_workers=2"])
    assert loud.returncode == 0, loud.stderr
    assert "Worker: " in loud.stderr and "Python sdk harness starting" in loud.stderr


def test_ctrl_c_exits_130_with_the_hint(tmp_path):
    from pipeline.synthetic.tree import make_adience_tree

    root = str(tmp_path / "tree")
    make_adience_tree(root, n_train=900, n_valid=100, image_size=256, seed=2)
    out = tmp_path / "records"
    # Its own process group, signalled as a whole: what Ctrl-C in a terminal does.
    proc = subprocess.Popen([*CLI, "preprocess", "-i", root, "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not glob.glob(str(out / ".tmp-*" / "progress" / "*")) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)          # until the workers report their first images (about 5 s of work left)
    assert proc.poll() is None, "preprocess finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == cli.EXIT_INTERRUPTED == 130
    assert "preprocess: interrupted; the previous output in OUT (if any) is untouched" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert not (out / "manifest.json").exists()


def test_ctrl_c_during_training_says_how_to_resume(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_train", interrupted)
    monkeypatch.setattr(cli, "_configure_logging", lambda verbose: None)
    assert cli.main(["train", "-w", "w.t7", "-i", "records", "-o", "m.keras"]) == 130
    assert capsys.readouterr().err == "train: interrupted; rerun the same command to resume from the last checkpoint\n"


@pytest.mark.parametrize("argv0, expected", [("/venv/bin/gender-classifier", "gender-classifier"),
                                             ("cli.py", "python cli.py"), ("/src/project/cli.py", "python cli.py")])
def test_messages_name_the_program_as_invoked(monkeypatch, capsys, tmp_path, argv0, expected):
    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setattr(cli, "_configure_logging", lambda verbose: None)
    # A library message (pipeline.manifest) that says `python cli.py preprocess …`.
    assert cli.main(["evaluate", "-m", str(tmp_path / "m.keras"), "-i", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"`{expected} preprocess -i ADIENCE_ROOT" in err
    assert expected == "python cli.py" or "python cli.py" not in err
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert capsys.readouterr().out.startswith(f"usage: {expected} train ")


def _group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group `pgid` (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_workers_stop_when_the_launcher_is_killed(tmp_path):
    """`timeout` or a job scheduler signals the launcher alone: its Beam workers must not linger."""
    from pipeline.synthetic.tree import make_adience_tree

    root = str(tmp_path / "tree")
    make_adience_tree(root, n_train=400, n_valid=40, image_size=256, seed=2)
    out = tmp_path / "records"
    proc = subprocess.Popen([*CLI, "preprocess", "-i", root, "-o", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(_group_members(proc.pid)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)          # until the worker processes run
    assert proc.poll() is None and len(_group_members(proc.pid)) >= 3
    proc.terminate()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 20
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _group_members(proc.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


def test_process_alive():
    from pipeline.preprocess.worker import process_alive

    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while process_alive(child.pid) and time.monotonic() < deadline:   # exits, then a zombie until reaped
        time.sleep(0.05)
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)
