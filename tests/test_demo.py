"""`python cli.py demo`: the whole job end to end on generated data, as `make demo` runs it."""
from __future__ import annotations

import json
import re
import os
import subprocess

from tests.conftest import CLI


def test_demo_runs_end_to_end_and_reuses_nothing_stale(tmp_path):
    work = tmp_path / "demo"
    work.mkdir()
    # What an earlier demo run could have left: the marker, and a checkpoint that would otherwise
    # be resumed (a finished training) and records that would be refused without --overwrite.
    (work / ".gender-classifier-demo").touch()
    (work / "gender_classifier.ckpt").mkdir()
    (work / "gender_classifier.ckpt" / "checkpoint").write_text("stale")
    (work / "records").mkdir()
    (work / "records" / "manifest.json").write_text("{}")

    proc = subprocess.run([*CLI, "demo", "--work-dir", str(work), "--epochs", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for command in ("preprocess", "train", "evaluate", "classify"):
        assert f"$ python cli.py {command} " in proc.stdout      # each command shown before it runs
    assert "SYNTHETIC" in proc.stdout
    with open(work / "report" / "report.json") as f:
        valid = json.load(f)["valid"]
    assert valid["accuracy"] >= 0.90
    assert f"{valid['accuracy']:.2%}" in proc.stdout
    assert os.path.isfile(work / "gender_classifier.keras")
    assert "resumed" not in proc.stdout                           # the stale checkpoint was not used
    # The linear start: its epoch-0 accuracy and how long it took, in the summary.
    assert re.search(r"before training, the linear start gave [\d.]+% on validation; the start took [\d.]+ s",
                     proc.stdout), proc.stdout[-2000:]


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run([*CLI, "demo", "--work-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
