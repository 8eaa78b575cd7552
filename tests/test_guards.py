"""Issue #19, the training, preprocess and evaluate findings: labels outside {0, 1}, out-of-range
seeds, data swapped behind the same names and sizes, two runs into the same outputs, half-replaced
report folders, Ctrl-C to the preprocess launcher, symlinked shards.

Refusals are asserted as test_safety does: exit status 2, one `error:` line, no traceback. Most
variants call `cli.main` in this process (no second TensorFlow start-up).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from pipeline.preprocess.job import run_preprocess
from pipeline.records import decode_example, encode_example
from pipeline.schema import MANIFEST_NAME

from .test_safety import IN_MEMORY, SIZE, main, manifest_of, refused


def _records_of(path: str) -> list[bytes]:
    import tensorflow as tf

    return [bytes(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def rewrite_shard(records: str, split: str, index: int, edit, update_manifest: bool = True) -> str:
    """Rewrite one shard with every record passed through edit(dict) -> dict; the manifest's hash
    of it follows (as a preprocess run that wrote such records would have it) unless told not to."""
    import tensorflow as tf

    body = manifest_of(records)
    name = body["splits"][split]["shards"][index]
    path = os.path.join(records, name)
    examples = [edit(decode_example(r)) for r in _records_of(path)]
    with tf.io.TFRecordWriter(path) as writer:
        for e in examples:
            writer.write(encode_example(e["image"], e["label"], e["age"], e["path"]))
    hashes = body["splits"][split].get("shard_sha256")
    if update_manifest and hashes is not None:
        with open(path, "rb") as f:
            hashes[index] = hashlib.sha256(f.read()).hexdigest()
        with open(os.path.join(records, MANIFEST_NAME), "w") as f:
            json.dump(body, f)
    return path


# ----------------------------------------------------------------------------- 8. labels
def test_train_and_evaluate_refuse_labels_outside_0_and_1(slim_t7, small_model, records, tmp_path):
    rewrite_shard(records, "train", 0, lambda e: {**e, "label": 7})
    rewrite_shard(records, "valid", 0, lambda e: {**e, "label": 7})
    out = tmp_path / "m.keras"
    refused(main("train", "-w", slim_t7, "-i", records, "-o", out, "-b1", 2, "--stats-images", 4,
                 "--freeze-through", "none"), "label must be 0 (female) or 1 (male)")
    assert not out.exists()
    refused(main("evaluate", "-m", small_model, "-i", records, "--report-dir", tmp_path / "r"),
            "label must be 0 (female) or 1 (male)")
    assert not (tmp_path / "r").exists()


def test_the_label_rule_is_one_function():
    import numpy as np

    from model.evaluation.evaluate import split_metrics
    from pipeline.errors import DataError
    from pipeline.schema import label_problem

    assert label_problem([0, 1, 1]) is None
    assert "got [7]" in label_problem(np.array([0, 7]))
    with pytest.raises(DataError, match=r"label must be 0 \(female\) or 1 \(male\), got \[-1\]"):
        split_metrics(np.array([0, -1]), np.array([0.1, 0.2]), np.array([30, 30]))


# ----------------------------------------------------------------------------- 9. seed range
@pytest.mark.parametrize("seed", ["-1", str(2 ** 63 - 1), str(2 ** 31 - 1)])
def test_train_refuses_a_seed_out_of_range_in_one_line(slim_t7, tiny_records, tmp_path, seed):
    refused(main("train", "-w", slim_t7, "-i", tiny_records, "-o", tmp_path / "m.keras", "--seed", seed),
            "--seed must be a whole number in [0, 2147483646]", f"got {seed}")
    assert not os.listdir(tmp_path)


def test_the_config_check_names_the_seed_field(slim_t7, tiny_records, tmp_path):
    from model.errors import ModelError
    from model.training.config import MAX_SEED, TrainConfig, check_config

    for seed in (-1, 2 ** 63 - 1, MAX_SEED + 1, 1.5):
        with pytest.raises(ModelError, match="`seed`") as caught:
            check_config(TrainConfig(weights=slim_t7, records=tiny_records, output=str(tmp_path / "m.keras"),
                                     seed=seed))
        assert caught.value.field == "seed"
    check_config(TrainConfig(weights=slim_t7, records=tiny_records, output=str(tmp_path / "m.keras"),
                             seed=MAX_SEED))


# ----------------------------------------------------------------------------- 11, 12. output locks
_HOLDER = """
import os, sys, time
sys.path.insert(0, {root!r})
from pipeline.files import output_lock
with output_lock({path!r}, "x", folder={folder!r}):
    print("held", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def held_by_another_process(path: str, folder: bool):
    """Another process holding the output's lock (a run in progress); it is killed afterwards."""
    from .conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-c", _HOLDER.format(root=ROOT, path=str(path), folder=folder)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_second_train_into_the_same_output_is_refused_saying_who_holds_it(slim_t7, tiny_records, tmp_path):
    out = tmp_path / "m.keras"
    with held_by_another_process(out, folder=False) as pid:
        line = refused(main("train", "-w", slim_t7, "-i", tiny_records, "-o", out),
                       "-o/--output", str(out), "in use by another run", f"pid {pid} on host {socket.gethostname()}")
    assert "since 20" in line
    assert not out.exists() and not (tmp_path / "m.ckpt").exists()
    # The kernel dropped the killed holder's lock: the next run may take it, and leaves no lock file.
    from pipeline.files import lock_file_of, output_lock

    with output_lock(str(out), "x"):
        pass
    assert not os.path.exists(lock_file_of(str(out), folder=False))


def test_a_second_preprocess_into_the_same_out_is_refused_and_the_lock_is_held_while_it_runs(tiny_root, tmp_path):
    from pipeline.errors import DataError
    from pipeline.files import LOCK_NAME, output_lock
    from pipeline.preprocess.events import Started

    out = tmp_path / "records"
    with held_by_another_process(out, folder=True) as pid:
        refused(main("preprocess", "-i", tiny_root, "-o", out, "--image-size", SIZE, *IN_MEMORY),
                "-o/--output", "in use by another run", f"pid {pid} on host")
    assert os.listdir(out) == [LOCK_NAME]     # nothing written; the killed holder's lock file stays, its lock is gone
    tried = []

    def progress(event):
        if isinstance(event, Started):
            try:
                with output_lock(str(out), "OUT", folder=True):
                    tried.append("free")
            except DataError as err:
                tried.append(str(err))

    run_preprocess(tiny_root, str(out), image_size=SIZE, beam_args=IN_MEMORY, progress=progress)
    assert len(tried) == 1 and f"pid {os.getpid()}" in tried[0]
    assert MANIFEST_NAME in os.listdir(out) and LOCK_NAME not in os.listdir(out)


# ----------------------------------------------------------------------------- 10. content hashes
def test_preprocess_writes_each_shards_sha256_and_the_schema_version(tiny_records):
    from pipeline.schema import SCHEMA_VERSION

    body = manifest_of(tiny_records)
    assert body["schema_version"] == SCHEMA_VERSION == 2
    for split in body["splits"].values():
        assert len(split["shard_sha256"]) == len(split["shards"])
        for name, digest in zip(split["shards"], split["shard_sha256"]):
            with open(os.path.join(tiny_records, name), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest


def test_a_manifest_without_hashes_is_refused_in_one_line(records, small_model, tmp_path):
    body = manifest_of(records)
    body["splits"]["valid"].pop("shard_sha256")
    with open(os.path.join(records, MANIFEST_NAME), "w") as f:
        json.dump(body, f)
    refused(main("evaluate", "-m", small_model, "-i", records, "--report-dir", tmp_path / "r"),
            "no sha256 for each of its 2 shards", "--overwrite")
    body["schema_version"] = 1
    with open(os.path.join(records, MANIFEST_NAME), "w") as f:
        json.dump(body, f)
    refused(main("evaluate", "-m", small_model, "-i", records, "--report-dir", tmp_path / "r"),
            "schema version 1", "--overwrite")


def _invert(example: dict) -> dict:
    return {**example, "image": 255 - example["image"]}


def test_train_holds_its_locks_and_resume_refuses_records_of_other_pixels_with_the_same_sizes(slim_t7, records,
                                                                                             tmp_path):
    """One run shows both: train holds its output and checkpoint locks while it runs (11), and
    records rewritten with other pixels under the same names, counts and sizes are not resumed (10)."""
    from model.errors import ModelError
    from model.training import TrainConfig, train
    from model.training.events import Setup
    from pipeline.errors import DataError
    from pipeline.files import output_lock

    out = str(tmp_path / "m.keras")
    tried = []

    def progress(event):
        if isinstance(event, Setup):
            for path, what in ((out, "output"), (str(tmp_path / "m.ckpt"), "checkpoint")):
                try:
                    with output_lock(path, what):
                        tried.append((what, "free"))
                except DataError as err:
                    tried.append((what, str(err)))

    config = TrainConfig(weights=slim_t7, records=records, output=out, epochs=1, batch_size=4, augment=False,
                         stats_images=4, strategy="default", precision="float32", freeze_through="none")
    train(config, progress=progress)
    assert [w for w, _ in tried] == ["output", "checkpoint"]
    assert all(f"in use by another run (pid {os.getpid()}" in m for _, m in tried), tried
    assert os.path.exists(out) and not [n for n in os.listdir(tmp_path) if n.endswith(".lock")]

    sizes = {n: os.path.getsize(os.path.join(records, n)) for n in os.listdir(records) if n != MANIFEST_NAME}
    for split, body in manifest_of(records)["splits"].items():
        for index in range(len(body["shards"])):
            rewrite_shard(records, split, index, _invert)      # what preprocess of inverted faces writes
    assert {n: os.path.getsize(os.path.join(records, n)) for n in sizes} == sizes
    with pytest.raises(ModelError, match="holds a checkpoint of a different training .*train_records"):
        train(dataclasses.replace(config, epochs=2))


def test_one_swapped_shard_is_refused_by_train_and_evaluate_and_named_by_shard_check(slim_t7, small_model,
                                                                                     records, tmp_path):
    from pipeline.shard_check import find_corrupt_shard

    shard = rewrite_shard(records, "valid", 1, _invert, update_manifest=False)
    before = manifest_of(records)
    line = refused(main("train", "-w", slim_t7, "-i", records, "-o", tmp_path / "m.keras"),
                   f"shard {shard} does not hold the bytes preprocess wrote", "--overwrite")
    assert "sha256" in line
    refused(main("evaluate", "-m", small_model, "-i", records, "--report-dir", tmp_path / "r"),
            f"shard {shard} does not hold the bytes preprocess wrote")
    assert not (tmp_path / "r").exists() and not (tmp_path / "m.keras").exists()
    assert find_corrupt_shard(records, ["train", "valid"])[0] == shard
    assert manifest_of(records) == before


def test_a_symlinked_shard_is_refused_in_one_line(small_model, records, tiny_records, tmp_path):
    name = manifest_of(records)["splits"]["valid"]["shards"][0]
    os.remove(os.path.join(records, name))
    os.symlink(os.path.join(tiny_records, name), os.path.join(records, name))   # the same bytes, elsewhere
    refused(main("evaluate", "-m", small_model, "-i", records, "--report-dir", tmp_path / "r"),
            os.path.join(records, name), "symbolic link")


def test_the_folds_layout_hashes_its_fold_files_into_the_records_digest(tmp_path):
    from pipeline.folds import FOLD_FILE
    from pipeline.manifest import FOLD_FILES_SHA256, manifest_digest
    from pipeline.synthetic.tree import make_adience_folds

    root, out = str(tmp_path / "folds"), str(tmp_path / "records")
    make_adience_folds(root, n_users=5, faces_per_user=2, image_size=32, seed=1)
    run_preprocess(root, out, image_size=SIZE, fold_shards=1, beam_args=IN_MEMORY)
    body = manifest_of(out)
    for k in range(5):
        with open(os.path.join(root, FOLD_FILE.format(k=k)), "rb") as f:
            assert body[FOLD_FILES_SHA256][FOLD_FILE.format(k=k)] == hashlib.sha256(f.read()).hexdigest()
    digest = manifest_digest(out, ["fold1", "fold2"])
    body[FOLD_FILES_SHA256][FOLD_FILE.format(k=0)] = "0" * 64      # a fold file that said otherwise
    with open(os.path.join(out, MANIFEST_NAME), "w") as f:
        json.dump(body, f)
    assert manifest_digest(out, ["fold1", "fold2"]) != digest


# ----------------------------------------------------------------------------- 13. report folders
def _evaluation(records: str):
    """An Evaluation of the records' valid split without a model (scores made up)."""
    import numpy as np

    from model.evaluation.evaluate import Evaluation, SplitPredictions, split_metrics

    labels, ages = np.array([0, 1, 0, 1]), np.array([3, 25, 40, 60])
    scores = np.array([0.2, 0.9, 0.6, 0.7], np.float32)
    p = SplitPredictions("valid", [f"x/{i}.jpg" for i in range(4)], labels, ages, scores)
    return Evaluation("m.keras", records, {"valid": p}, {"valid": split_metrics(labels, scores, ages)})


def _tree(folder) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), folder)] = f.read()
    return out


def test_a_report_killed_while_rewritten_leaves_the_old_report_whole(tiny_records, tmp_path, monkeypatch):
    from model.evaluation import report as report_module

    report_dir = tmp_path / "report"
    report_module.write_report(_evaluation(tiny_records), str(report_dir))
    before = _tree(report_dir)
    assert "report.json" in before and "valid_roc.png" in before and "model_card.md" in before

    def killed(*args, **kwargs):
        raise KeyboardInterrupt      # after the plots were written, before the rest

    monkeypatch.setattr(report_module, "write_predictions_csv", killed)
    with pytest.raises(KeyboardInterrupt):
        report_module.write_report(_evaluation(tiny_records), str(report_dir))
    assert _tree(report_dir) == before
    assert os.listdir(tmp_path) == ["report"]          # no temporary folder left beside it


def test_ctrl_c_while_writing_plots_writes_no_report_and_says_so(small_model, tiny_records, tmp_path, monkeypatch):
    from model.evaluation import plots

    calls = []
    original = plots.save

    def save_then_interrupt(*args, **kwargs):
        calls.append(1)
        original(*args, **kwargs)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(plots, "save", save_then_interrupt)
    proc = main("evaluate", "-m", small_model, "-i", tiny_records, "--report-dir", tmp_path / "r")
    assert proc.returncode == 130 and "no report was written" in proc.stderr
    assert len(calls) == 2 and os.listdir(tmp_path) == []


def test_report_folder_problems_are_found_before_evaluating(small_model, tiny_records, tmp_path, monkeypatch):
    import model.evaluation.evaluate as evaluate_module

    # A report.json that is a folder: the report replaces its folder whole, so it simply works.
    (tmp_path / "r" / "report.json").mkdir(parents=True)
    assert main("evaluate", "-m", small_model, "-i", tiny_records, "--report-dir", tmp_path / "r").returncode == 0
    assert os.path.isfile(tmp_path / "r" / "report.json")

    def never(*args, **kwargs):
        raise AssertionError("evaluated before the report folder was checked")

    monkeypatch.setattr(evaluate_module, "evaluate", never)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused(main("evaluate", "-m", small_model, "-i", tiny_records, "--report-dir", tmp_path / "mine"),
            "--report-dir", "not an earlier report")
    (tmp_path / "file").write_text("x")
    refused(main("evaluate", "-m", small_model, "-i", tiny_records, "--report-dir", tmp_path / "file"),
            "--report-dir")
    os.symlink(tmp_path / "r", tmp_path / "link")
    refused(main("evaluate", "-m", small_model, "-i", tiny_records, "--report-dir", tmp_path / "link"),
            "--report-dir", "symbolic link")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- 14. Ctrl-C to the launcher alone
_SLOW_SHARDS = """
import os, time
if os.environ.get("GC_TEST_SLOW_SHARDS"):
    from pipeline.preprocess import graph
    _write = graph.WriteShard._write_shard
    def _slow(self, *args, **kwargs):
        time.sleep(60)           # a shard that takes long: the run is surely mid-way when stopped
        return _write(self, *args, **kwargs)
    graph.WriteShard._write_shard = _slow
"""


def test_sigint_to_the_launcher_alone_ends_its_workers_quietly_and_leaves_no_temp_folder(tiny_root, tmp_path):
    import signal
    import time

    from pipeline.preprocess.execute import _children
    from pipeline.preprocess.worker import process_alive

    from .conftest import CLI, ROOT

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SLOW_SHARDS)      # imported by every process, workers too
    env = {**os.environ, "GC_TEST_SLOW_SHARDS": "1",
           "PYTHONPATH": os.pathsep.join([str(hooks), ROOT, os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "records"
    err = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([*CLI, "preprocess", "-i", tiny_root, "-o", str(out), "--image-size", str(SIZE),
                             "--direct_running_mode=multi_processing", "--direct_num_workers=1"],
                            stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env=env)
    try:
        deadline, workers = time.monotonic() + 120, []
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _children(proc.pid)
            beats = [n for n in (os.listdir(out) if out.exists() else []) if n.startswith(".tmp-")]
            if workers and beats and os.path.exists(out / beats[0] / "plan.json"):
                break
            time.sleep(0.1)
        assert workers and proc.poll() is None, "the run ended before its worker started"
        time.sleep(1.0)                     # the worker connects and takes its shard
        os.kill(proc.pid, signal.SIGINT)    # the launcher alone, not its process group
        assert proc.wait(timeout=60) == 130
        assert not [pid for pid in workers if process_alive(pid)], "a worker outlived its launcher"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err.seek(0)
    text = err.read()
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
    assert "preprocess: interrupted" in text
    time.sleep(1.5)                         # a straggler would re-create the temp folder by now
    assert [n for n in os.listdir(out) if n.startswith(".tmp-")] == []


def test_a_rerun_removes_an_unlocked_temp_folder_at_once(tiny_root, tmp_path):
    out = tmp_path / "records"
    leftover = out / ".tmp-0123456789ab"        # an orphaned worker re-created it after its run ended
    (leftover / "progress").mkdir(parents=True)
    (leftover / "progress" / "train-00000.json").write_text("{}")
    summary = run_preprocess(tiny_root, str(out), image_size=SIZE, beam_args=IN_MEMORY)
    assert summary.stale_removed == [".tmp-0123456789ab"] and summary.busy_temp == []
    assert not leftover.exists()
