"""The preprocess Beam job on generated Adience folders: contract, reconciliation, determinism,
every bad-input path. Most runs use the in-process runner; one uses two worker processes."""
from __future__ import annotations

import json
import os
import subprocess
import zlib

import numpy as np
import pytest
import tensorflow as tf

from pipeline.preprocess import job as beam_job
from pipeline.preprocess.events import Advanced, Committed, Started
from pipeline.preprocess.job import default_shards, run_preprocess
from pipeline.decode import decode_image
from pipeline.errors import DataError
from pipeline.manifest import load_manifest
from pipeline.records import decode_example
from pipeline.schema import LABEL_NAMES, MANIFEST_NAME, REJECTS_NAME, SPLIT_DIRS
from pipeline.synthetic.tree import face_image, make_adience_tree, write_image

from .conftest import CLI, ROOT

IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
EXPECTED_REASON = {
    "random_bytes": "not an image (cannot identify format)",
    "text": "not an image (cannot identify format)",
    "empty": "empty file",
    "truncated_jpeg": "truncated image",
    "broken_jpeg": "corrupt image data",
    "bad_folder": "in a folder whose name is not <age>_<F|M>: 'unknown' (folder skipped)",
}


def read_records(path: str) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(path)]


def all_records(records_dir: str) -> dict[str, list[dict]]:
    """split -> records in shard order, each with its shard index and position."""
    manifest = load_manifest(records_dir)
    out = {}
    for split, info in manifest.splits.items():
        out[split] = []
        for index, name in enumerate(info.shards):
            for raw in read_records(os.path.join(records_dir, name)):
                rec = decode_example(raw)
                rec.update(shard=index, shards=len(info.shards), raw=raw)
                out[split].append(rec)
    return out


def output_bytes(records_dir: str) -> dict[str, bytes]:
    return {name: open(os.path.join(records_dir, name), "rb").read()
            for name in sorted(os.listdir(records_dir))}


@pytest.fixture(scope="module")
def records(records_dir):
    return all_records(records_dir)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A small tree (no bad files) for the runs that replace or refuse output."""
    root = str(tmp_path_factory.mktemp("tiny"))
    return root, make_adience_tree(root, n_train=12, n_valid=6, image_size=48, seed=3,
                                   bad_files=False, variety=False)


@pytest.fixture(scope="module")
def multi_process_run(adience_root, tmp_path_factory):
    """The fixture tree again, with two worker processes, recording every progress report."""
    root, _ = adience_root
    out = str(tmp_path_factory.mktemp("records_mp"))
    reports = []
    summary = run_preprocess(root, out, image_size=224, train_shards=3, valid_shards=2,
                             beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
                             progress=reports.append)
    return out, summary, reports


# ----------------------------------------------------------------------------- the output contract
def test_every_record_has_the_schema(records_dir):
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string), "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64), "channels": tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64), "age": tf.io.FixedLenFeature([], tf.int64),
        "path": tf.io.FixedLenFeature([], tf.string),
    }
    manifest = load_manifest(records_dir)
    n = 0
    for info in manifest.splits.values():
        for name in info.shards:
            for raw in read_records(os.path.join(records_dir, name)):
                f = tf.io.parse_single_example(raw, spec)
                assert (int(f["height"]), int(f["width"]), int(f["channels"])) == (224, 224, 3)
                image = tf.io.decode_raw(f["image"], tf.uint8)
                assert image.shape == (224 * 224 * 3,)
                assert int(f["label"]) in (0, 1)
                n += 1
    assert n == manifest.found - manifest.rejected > 0


def test_pixels_equal_decode_image_of_the_same_file(adience_root, records):
    root, _ = adience_root
    for rec in (r for split in records.values() for r in split):
        with open(os.path.join(root, rec["path"]), "rb") as f:
            expected = decode_image(f.read(), 224)
        assert np.array_equal(rec["image"], expected), rec["path"]


def test_bgr_order_pure_red_image(adience_root, records):
    _, summary = adience_root
    (red,) = [r for r in records["train"] if r["path"] == summary.red_image]
    assert (red["image"][..., 2] == 255).all()
    assert (red["image"][..., :2] == 0).all()


def test_labels_ages_and_paths_come_from_the_folders(adience_root, records):
    _, summary = adience_root
    seen = set()
    for split, recs in records.items():
        for rec in recs:
            top, folder, _ = rec["path"].split("/")
            assert top == SPLIT_DIRS[split]
            age, gender = folder.split("_")
            assert (rec["age"], rec["label"]) == (int(age), {"F": 0, "M": 1}[gender])
            seen.add(rec["path"])
    assert seen == set(summary.images)


def test_counts_reconcile_with_the_generator(adience_root, records_dir, records):
    _, summary = adience_root
    manifest = load_manifest(records_dir)
    assert manifest.found == summary.found
    assert manifest.found - manifest.rejected == summary.good
    assert manifest.rejected == len(summary.rejects)
    body = json.load(open(os.path.join(records_dir, MANIFEST_NAME)))
    assert body["found"] == body["written"] + body["rejected"]
    for split, info in manifest.splits.items():
        assert info.by_label == summary.by_label[split]
        assert info.by_age == summary.by_age[split]
        assert info.count == len(records[split]) == summary.count(split)
    assert body["skipped_folders"] == summary.skipped_folders


def test_shard_membership_is_the_stable_hash_and_records_are_sorted(records):
    for recs in records.values():
        for rec in recs:
            assert rec["shard"] == zlib.crc32(rec["path"].encode()) % rec["shards"]
        by_shard = {}
        for rec in recs:
            by_shard.setdefault(rec["shard"], []).append(rec["path"])
        for paths in by_shard.values():
            assert paths == sorted(paths)


def test_rejects_are_listed_with_their_reasons(adience_root, records_dir):
    _, summary = adience_root
    lines = [json.loads(line) for line in open(os.path.join(records_dir, REJECTS_NAME))]
    listed = {line["path"]: line["reason"] for line in lines}
    assert set(listed) == set(summary.rejects)
    for path, kind in summary.rejects.items():
        assert listed[path].startswith(EXPECTED_REASON[kind]), (path, listed[path])


# ----------------------------------------------------------------------------- runners and progress
def test_two_worker_processes_write_identical_bytes(records_dir, multi_process_run):
    out, summary, _ = multi_process_run
    assert "multi_processing" in summary.runner
    assert summary.worker_processes == 2          # the shards really were spread over both
    assert output_bytes(out) == output_bytes(records_dir)


def test_summary_and_beam_counters(adience_root, multi_process_run):
    _, expected = adience_root
    out, summary, _ = multi_process_run
    assert summary.written == expected.good and summary.rejected == len(expected.rejects)
    decoded_rejects = sum(1 for kind in expected.rejects.values() if kind != "bad_folder")
    assert summary.counters == {"images_written": expected.good, "images_rejected": decoded_rejects}
    assert summary.skipped_folders == expected.skipped_folders
    assert sum(summary.reject_reasons.values()) == summary.rejected
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_progress_reaches_the_total(adience_root, multi_process_run):
    _, expected = adience_root
    _, _, reports = multi_process_run
    # The files handed to the workers: all but those in a badly named folder.
    total = expected.found - sum(1 for kind in expected.rejects.values() if kind == "bad_folder")
    assert isinstance(reports[0], Started) and reports[0].total == total
    assert isinstance(reports[-1], Committed) and reports[-1].written == expected.good
    advanced = [r for r in reports if isinstance(r, Advanced)]
    assert advanced and all(r.total == total for r in advanced)
    done = [r.done for r in advanced]
    assert done == sorted(done) and done[-1] == total
    assert advanced[-1].rate > 0


def test_default_shard_counts():
    assert default_shards(29437, 224) == 34          # about 128 MB of pixels per shard
    assert default_shards(500, 224) == 2             # at least two, so that two workers share it
    assert default_shards(1, 224) == 1
    assert default_shards(29437, 112) < default_shards(29437, 224)


# ----------------------------------------------------------------------------- bad input
def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        run_preprocess(str(tmp_path / "nope"), str(tmp_path / "out"), beam_args=IN_MEMORY)


def test_root_without_aligned_or_valid(tmp_path):
    write_image(str(tmp_path / "root" / "faces" / "a.jpg"), face_image(0, 32))
    with pytest.raises(DataError, match="has neither aligned/ nor valid/"):
        run_preprocess(str(tmp_path / "root"), str(tmp_path / "out"), beam_args=IN_MEMORY)
    assert not (tmp_path / "out").exists()


def test_unknown_options_are_refused(tiny_root, tmp_path):
    root, _ = tiny_root
    with pytest.raises(DataError, match="--runer"):
        run_preprocess(root, str(tmp_path / "out"), beam_args=["--runer=DataflowRunner"])


def test_misplaced_files_are_rejects(tmp_path):
    root = tmp_path / "root"
    make_adience_tree(str(root), n_train=4, n_valid=0, image_size=32, bad_files=False, variety=False)
    write_image(str(root / "aligned" / "stray.jpg"), face_image(0, 32))
    write_image(str(root / "aligned" / "28_F" / "deeper" / "x.jpg"), face_image(0, 32))
    summary = run_preprocess(str(root), str(tmp_path / "out"), image_size=32, beam_args=IN_MEMORY)
    assert (summary.found, summary.written, summary.rejected) == (6, 4, 2)
    assert summary.worker_processes == 1
    listed = [json.loads(line) for line in open(tmp_path / "out" / REJECTS_NAME)]
    assert [r["path"] for r in listed] == ["aligned/28_F/deeper/x.jpg", "aligned/stray.jpg"]
    assert all(r["reason"] == "not directly inside an <age>_<F|M> folder" for r in listed)
    assert list(load_manifest(str(tmp_path / "out")).splits) == ["train"]


def test_rerun_without_overwrite_refuses_and_keeps_the_old_output(tiny_root, tmp_path):
    root, _ = tiny_root
    out = str(tmp_path / "out")
    run_preprocess(root, out, image_size=48, beam_args=IN_MEMORY)
    before = output_bytes(out)
    with pytest.raises(DataError, match="already holds records.*`overwrite`"):
        run_preprocess(root, out, image_size=32, beam_args=IN_MEMORY)
    assert output_bytes(out) == before


def test_overwrite_replaces_everything_when_the_shard_count_changes(tiny_root, tmp_path):
    root, summary = tiny_root
    out = str(tmp_path / "out")
    run_preprocess(root, out, image_size=48, train_shards=5, valid_shards=3, beam_args=IN_MEMORY)
    run_preprocess(root, out, image_size=32, train_shards=2, valid_shards=1, beam_args=IN_MEMORY,
                   overwrite=True)
    manifest = load_manifest(out, image_size=32)
    expected = {MANIFEST_NAME, REJECTS_NAME, *(n for s in manifest.splits.values() for n in s.shards)}
    assert set(os.listdir(out)) == expected
    assert len(manifest.splits["train"].shards) == 2 and len(manifest.splits["valid"].shards) == 1
    records = all_records(out)
    assert sum(len(r) for r in records.values()) == summary.good
    assert all(r["image"].shape == (32, 32, 3) for recs in records.values() for r in recs)


def test_a_failed_run_leaves_the_old_output_untouched(tiny_root, tmp_path, monkeypatch):
    root, _ = tiny_root
    out = str(tmp_path / "out")
    run_preprocess(root, out, image_size=48, beam_args=IN_MEMORY)
    before = output_bytes(out)

    def broken(*args, **kwargs):
        raise DataError("internal check failed: simulated")

    monkeypatch.setattr(beam_job, "_reconcile", broken)
    with pytest.raises(DataError, match="simulated"):
        run_preprocess(root, out, image_size=32, train_shards=7, beam_args=IN_MEMORY, overwrite=True)
    assert output_bytes(out) == before                     # no new shard, no temp folder left


def test_bad_shard_counts_are_refused(tiny_root, tmp_path):
    root, _ = tiny_root
    with pytest.raises(DataError, match="`train_shards` must be at least 1"):
        run_preprocess(root, str(tmp_path / "out"), train_shards=0, beam_args=IN_MEMORY)


# ----------------------------------------------------------------------------- the command line
def test_cli_runs_and_prints_a_summary(tiny_root, tmp_path):
    root, summary = tiny_root
    out = str(tmp_path / "out")
    proc = subprocess.run([*CLI, "preprocess", "-i", root, "-o", out, "--image-size", "40", *IN_MEMORY],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {summary.good} records from {summary.found} files" in proc.stdout
    for split in ("train", "valid"):
        counts = summary.by_label[split]
        assert (f"{split}: {summary.count(split)} images ({counts['female']} {LABEL_NAMES[0]}, "
                f"{counts['male']} {LABEL_NAMES[1]})") in proc.stdout
    assert "images/s" in proc.stdout and "rejected: 0" in proc.stdout
    assert load_manifest(out, image_size=40).found == summary.found


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([*CLI, "preprocess", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not exist" in errors[0]
    assert "Traceback" not in proc.stderr


def test_unwritable_output_is_one_clear_error(tiny_root, tmp_path):
    root, _ = tiny_root
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(DataError, match="cannot write into"):
        run_preprocess(root, str(tmp_path / "a_file" / "out"), beam_args=IN_MEMORY)
    with pytest.raises(DataError, match="is a file"):
        run_preprocess(root, str(tmp_path / "a_file"), beam_args=IN_MEMORY)


def test_linked_folders_are_refused_rather_than_silently_missed(tiny_root, tmp_path):
    root, _ = tiny_root
    tree = tmp_path / "root"
    (tree / "aligned").mkdir(parents=True)
    os.symlink(os.path.join(root, "aligned", "2_F"), tree / "aligned" / "2_F")
    with pytest.raises(DataError, match="symbolic link to a folder"):
        run_preprocess(str(tree), str(tmp_path / "out"), beam_args=IN_MEMORY)
