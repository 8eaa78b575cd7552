"""The Adience benchmark protocol (issue 7): the fold-file parser, the generated official layout,
`preprocess` of it (five subject-exclusive folds, rejects, unlisted files, determinism), the reader
over several folds, `train --val-fold`, and the 5-fold cross-validation end to end through the
commands (`train --folds` killed and resumed, `evaluate --folds`), the aggregate report checked
against the per-fold reports.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import cli
from pipeline.preprocess.job import run_preprocess
from pipeline.decode import decode_image
from pipeline.errors import DataError
from pipeline.folds import (FOLD_FILE, FOLD_SPLITS, N_FOLDS, FoldRow, check_subject_exclusive, parse_age,
                            parse_fold_file)
from pipeline.manifest import load_manifest
from pipeline.reader import make_dataset
from pipeline.records import decode_example
from pipeline.schema import AGE_UNKNOWN, MANIFEST_NAME, REJECTS_NAME, age_group_of
from pipeline.synthetic.tree import BAD_ROW_KINDS, make_adience_folds, make_adience_tree
from tests.conftest import CLI, ROOT

IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
SIZE = 64
HEADER = "\t".join(("user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy", "tilt_ang",
                    "fiducial_yaw_angle", "fiducial_score"))
EXPECTED_REASON = {
    "gender_u": "gender not m or f: 'u'",
    "empty_gender": "empty gender: ",
    "missing_image": "missing image: ",
    "malformed": "malformed row",
    "bad_age": "unparseable age: '(about, thirty)'",
    "corrupt_image": "truncated image",
}


def fold_records(records_dir: str) -> dict[str, list[dict]]:
    """fold split -> its records (decoded), in shard order."""
    manifest = load_manifest(records_dir)
    out = {}
    for split, info in manifest.splits.items():
        out[split] = [decode_example(r.numpy()) for name in info.shards
                      for r in tf.data.TFRecordDataset(os.path.join(records_dir, name))]
    return out


def output_bytes(directory: str) -> dict[str, bytes]:
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def folds_root(tmp_path_factory):
    """The official layout, generated: 10 users (2 per fold), 4 faces each, plus every bad row."""
    root = str(tmp_path_factory.mktemp("adience_folds"))
    return root, make_adience_folds(root, n_users=10, faces_per_user=4, image_size=SIZE, seed=0, bad_rows=True)


@pytest.fixture(scope="module")
def folds_records(folds_root, tmp_path_factory):
    root, _ = folds_root
    out = str(tmp_path_factory.mktemp("fold_records"))
    summary = run_preprocess(root, out, image_size=SIZE, fold_shards=2, beam_args=IN_MEMORY)
    return out, summary


@pytest.fixture(scope="module")
def aligned_valid_records(tmp_path_factory):
    """A tiny agegender_cleaned tree preprocessed: records of the other layout."""
    work = tmp_path_factory.mktemp("av")
    make_adience_tree(str(work / "root"), n_train=8, n_valid=4, image_size=32, seed=1, bad_files=False,
                      variety=False)
    run_preprocess(str(work / "root"), str(work / "records"), image_size=SIZE, beam_args=IN_MEMORY)
    return str(work / "root"), str(work / "records")


# ----------------------------------------------------------------------------- the fold-file parser
def test_ages_ranges_numbers_and_none():
    assert parse_age("(25, 32)") == 28 and age_group_of(parse_age("(25, 32)")) == "25-32"
    assert parse_age("(0, 2)") == 1 and age_group_of(1) == "0-2"
    assert parse_age("(60, 100)") == 80 and age_group_of(80) == "60+"
    assert parse_age(" (38,43) ") == 40 and age_group_of(40) == "38-43"
    assert parse_age("35") == 35 and parse_age("3") == 3
    assert parse_age("None") == AGE_UNKNOWN and age_group_of(AGE_UNKNOWN) == "unknown"
    for bad in ("(32, 25)", "thirty", "(25-32)", "-4", "2.5"):
        assert parse_age(bad) is None, bad


def test_fold_file_rows_and_rejects_with_reasons():
    text = "\n".join([
        HEADER,
        "u1\ta.jpg\t1\t(25, 32)\tf\t1\t2\t3\t4\t0\t0\t10",
        "u1\tb.jpg\t2\t35\tm\t1\t2\t3\t4\t0\t0\t10",
        "u2\tc.jpg\t3\tNone\tf\t1\t2\t3\t4\t0\t0\t10",
        "u2\td.jpg\t4\t(8, 12)\tu\t1\t2\t3\t4\t0\t0\t10",
        "u2\te.jpg\t5\t(8, 12)\t\t1\t2\t3\t4\t0\t0\t10",
        "",
        "no tabs on this line",
        "\tf.jpg\t6\t35\tm",
        "u3\tg.jpg\t7\tadult\tm\t1\t2\t3\t4\t0\t0\t10",
    ]) + "\n"
    rows, rejects = parse_fold_file(2, text)
    assert rows == [FoldRow(2, "aligned/u1/landmark_aligned_face.1.a.jpg", "u1", 0, 28, 2),
                    FoldRow(2, "aligned/u1/landmark_aligned_face.2.b.jpg", "u1", 1, 35, 3),
                    FoldRow(2, "aligned/u2/landmark_aligned_face.3.c.jpg", "u2", 0, AGE_UNKNOWN, 4)]
    assert rejects == [
        ("aligned/u2/landmark_aligned_face.4.d.jpg", "gender not m or f: 'u' in fold_2_data.txt line 5"),
        ("aligned/u2/landmark_aligned_face.5.e.jpg", "empty gender: fold_2_data.txt line 6"),
        ("fold_2_data.txt:8", "malformed row (need user_id, original_image, face_id, age, gender separated by tabs)"),
        ("fold_2_data.txt:9", "malformed row (need user_id, original_image, face_id, age, gender separated by tabs)"),
        ("aligned/u3/landmark_aligned_face.7.g.jpg",
         "unparseable age: 'adult' in fold_2_data.txt line 10 is neither a number nor a range like (25, 32)"),
    ]


def test_a_header_in_another_order_is_refused():
    swapped = HEADER.replace("age\tgender", "gender\tage")
    with pytest.raises(DataError, match="fold_0_data.txt starts with the header .* not an Adience fold file"):
        parse_fold_file(0, swapped + "\nu1\ta.jpg\t1\tf\t35\n")


def test_subject_exclusivity_check():
    rows = [FoldRow(0, "aligned/a/x", "a", 0, 28), FoldRow(1, "aligned/b/y", "b", 1, 28)]
    assert check_subject_exclusive(rows) == {"a": 0, "b": 1}
    with pytest.raises(DataError, match="user_id a has rows in fold_0_data.txt and fold_3_data.txt"):
        check_subject_exclusive([*rows, FoldRow(3, "aligned/a/z", "a", 1, 28)])


# ----------------------------------------------------------------------------- generated layout + preprocess
def test_generated_layout_matches_its_summary(folds_root):
    root, summary = folds_root
    assert [FOLD_FILE.format(k=k) for k in range(N_FOLDS)] == sorted(n for n in os.listdir(root) if n.endswith(".txt"))
    on_disk = {os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
               for d, _, names in os.walk(os.path.join(root, "aligned")) for n in names}
    named = set(summary.images) | {p for p, kind in summary.rejects.items() if kind not in ("missing_image", "malformed")}
    assert on_disk == named | set(summary.unlisted)
    assert set(summary.rejects.values()) == set(BAD_ROW_KINDS)
    assert {s for s in summary.ages.values()} >= {AGE_UNKNOWN, 28, 35}      # ranges, numbers and None
    assert sorted(set(summary.users.values())) == list(range(N_FOLDS))


def test_folds_are_subject_exclusive_in_the_records(folds_root, folds_records):
    _, summary = folds_root
    records = fold_records(folds_records[0])
    folds_of_user: dict[str, set[str]] = {}
    for split, recs in records.items():
        for rec in recs:
            top, user, _ = rec["path"].split("/")
            assert top == "aligned"
            folds_of_user.setdefault(user, set()).add(split)
    assert all(len(folds) == 1 for folds in folds_of_user.values()), folds_of_user
    assert {u: folds.pop() for u, folds in folds_of_user.items()} == {u: f"fold{k}" for u, k in summary.users.items()}


def test_manifest_lists_the_folds_and_counts_reconcile(folds_root, folds_records):
    _, expected = folds_root
    out, summary = folds_records
    body = json.load(open(os.path.join(out, MANIFEST_NAME)))
    assert body["layout"] == "adience-folds" and list(body["splits"]) == list(FOLD_SPLITS)
    assert body["found"] == expected.found == body["written"] + body["rejected"]     # rows = written + rejects
    assert body["written"] == expected.good and body["rejected"] == len(expected.rejects)
    assert body["unlisted"] == 1 and body["unlisted_files"] == expected.unlisted == summary.unlisted
    assert body["users_per_fold"] == {f"fold{k}": 2 for k in range(N_FOLDS)}
    records = fold_records(out)
    for split, info in load_manifest(out).splits.items():
        assert info.by_label == expected.by_label[split]
        assert info.by_age == expected.by_age[split]
        assert info.count == len(records[split]) == expected.count(split)
        assert len(info.shards) == 2 and all(s.startswith(f"{split}-") for s in info.shards)


def test_records_carry_the_rows_labels_and_ages_and_the_images_pixels(folds_root, folds_records):
    root, expected = folds_root
    for split, recs in fold_records(folds_records[0]).items():
        assert {r["path"] for r in recs} == {p for p, s in expected.images.items() if s == split}
        for rec in recs:
            assert (rec["label"], rec["age"]) == (expected.labels[rec["path"]], expected.ages[rec["path"]])
        rec = recs[0]
        with open(os.path.join(root, rec["path"]), "rb") as f:
            assert np.array_equal(rec["image"], decode_image(f.read(), SIZE))


def test_bad_rows_are_rejects_with_their_reasons(folds_root, folds_records):
    _, expected = folds_root
    out, summary = folds_records
    listed = {r["path"]: r["reason"] for r in map(json.loads, open(os.path.join(out, REJECTS_NAME)))}
    assert set(listed) == set(expected.rejects)
    for what, kind in expected.rejects.items():
        assert listed[what].startswith(EXPECTED_REASON[kind]), (what, listed[what])
    assert sum(summary.reject_reasons.values()) == summary.rejected == len(BAD_ROW_KINDS)


def test_byte_identical_output_with_two_worker_processes(folds_root, folds_records, tmp_path):
    root, _ = folds_root
    summary = run_preprocess(root, str(tmp_path / "again"), image_size=SIZE, fold_shards=2, layout="adience-folds",
                             beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert summary.worker_processes == 2
    assert output_bytes(str(tmp_path / "again")) == output_bytes(folds_records[0])


def test_preprocess_command_auto_detects_the_folds_and_says_what_it_did(folds_root, tmp_path, capsys):
    root, expected = folds_root
    assert cli.main(["preprocess", "-i", root, "-o", str(tmp_path / "out"), "--image-size", "32",
                     "--fold-shards", "1", *IN_MEMORY]) == 0
    out = capsys.readouterr().out
    assert f"wrote {expected.good} records from {expected.found} fold-file rows" in out
    assert "layout adience-folds: five subject-exclusive folds (10 user_ids, none in two folds)" in out
    for split in FOLD_SPLITS:
        counts = expected.by_label[split]
        assert (f"{split}: {expected.count(split)} images ({counts['female']} female, {counts['male']} male, "
                f"2 user_ids) in 1 shards") in out
    assert f"rejected: {len(expected.rejects)} (" in out and "1 missing image" in out
    assert "unlisted: 1 file(s) under aligned/ that no fold row names" in out


def test_a_user_in_two_folds_is_one_clear_error(tmp_path):
    root = tmp_path / "root"
    summary = make_adience_folds(str(root), n_users=5, faces_per_user=1, image_size=32, bad_rows=False)
    user = next(u for u, k in summary.users.items() if k == 0)
    with open(root / FOLD_FILE.format(k=3), "a") as f:
        f.write(f"{user}\tsomething_else.jpg\t999\t(25, 32)\tm\t1\t2\t3\t4\t0\t0\t10\n")
    with pytest.raises(DataError, match=f"user_id {user} has rows in fold_0_data.txt and fold_3_data.txt.*"
                                        f"not subject-exclusive"):
        run_preprocess(str(root), str(tmp_path / "out"), image_size=32, beam_args=IN_MEMORY)
    assert not (tmp_path / "out").exists()


def test_layouts_detected_forced_and_refused(tmp_path, aligned_valid_records):
    av_root, _ = aligned_valid_records
    root = tmp_path / "official"
    make_adience_folds(str(root), n_users=5, faces_per_user=1, image_size=32, bad_rows=False)
    forced = run_preprocess(str(root), str(tmp_path / "forced"), image_size=32, layout="aligned-valid",
                            beam_args=IN_MEMORY)
    # Forced, the official tree is read as agegender_cleaned: its <user_id> folders are badly named.
    assert forced.layout == "aligned-valid" and forced.written == 0 and forced.rejected == 5
    with pytest.raises(DataError, match="lacks fold_0_data.txt.*needs all five fold files"):
        run_preprocess(av_root, str(tmp_path / "x"), layout="adience-folds", beam_args=IN_MEMORY)
    os.remove(root / FOLD_FILE.format(k=4))
    with pytest.raises(DataError, match="lacks fold_4_data.txt"):
        run_preprocess(str(root), str(tmp_path / "y"), beam_args=IN_MEMORY)
    (tmp_path / "neither").mkdir()
    with pytest.raises(DataError, match="has neither aligned/ nor valid/ nor fold_K_data.txt.*`layout` aligned-valid"
                                        ".*`layout` adience-folds"):
        run_preprocess(str(tmp_path / "neither"), str(tmp_path / "z"), beam_args=IN_MEMORY)


def test_overwrite_replaces_fold_shards_too(tmp_path, aligned_valid_records):
    av_root, _ = aligned_valid_records
    root = tmp_path / "official"
    make_adience_folds(str(root), n_users=5, faces_per_user=2, image_size=32, bad_rows=False)
    out = str(tmp_path / "out")
    run_preprocess(str(root), out, image_size=32, fold_shards=3, beam_args=IN_MEMORY)
    assert len([n for n in os.listdir(out) if n.startswith("fold")]) == 15
    run_preprocess(av_root, out, image_size=32, beam_args=IN_MEMORY, overwrite=True)
    assert not [n for n in os.listdir(out) if n.startswith("fold")]
    assert load_manifest(out).layout == "aligned-valid"


# ----------------------------------------------------------------------------- reader
def test_several_folds_read_as_one_split(folds_records):
    out, _ = folds_records
    records = fold_records(out)
    union = sorted(r["path"] for split in ("fold0", "fold2", "fold4") for r in records[split])
    paths = [p.decode() for batch in make_dataset(out, ["fold0", "fold2", "fold4"], 5, with_meta=True,
                                                  shuffle=True, seed=0).as_numpy_iterator() for p in batch[3]]
    assert sorted(paths) == union
    # Shuffled across the folds: the order is not fold by fold.
    fold_order = [next(s for s in ("fold0", "fold2", "fold4") if p in {r["path"] for r in records[s]}) for p in paths]
    assert fold_order != sorted(fold_order)


# ----------------------------------------------------------------------------- aggregate statistics
def test_aggregate_is_mean_and_sample_std_of_the_folds():
    from model.evaluation.crossval import aggregate_folds
    from model.evaluation.evaluate import split_metrics

    rng = np.random.default_rng(0)
    metrics = []
    for k in range(N_FOLDS):
        n = 20 + 5 * k
        labels = np.arange(n) % 2
        scores = np.clip(labels * 0.6 + 0.2 + rng.normal(0, 0.12 + 0.05 * k, n), 0, 1).astype(np.float32)
        metrics.append(split_metrics(labels, scores, rng.choice([1, 28, 40, -1], n)))
    agg = aggregate_folds(metrics)
    accuracies = [m["accuracy"] for m in metrics]
    assert len(set(accuracies)) > 1                       # a real spread to measure
    assert agg["accuracy"]["mean"] == pytest.approx(statistics.mean(accuracies))
    assert agg["accuracy"]["std"] == pytest.approx(statistics.stdev(accuracies))     # sample std, n - 1
    assert agg["loss"]["std"] == pytest.approx(statistics.stdev(m["loss"] for m in metrics))
    labels_all = sum(m["n"] for m in metrics)
    assert agg["pooled"]["n"] == labels_all
    for group, entry in agg["by_age"].items():
        per_fold = [m["by_age"].get(group, {"n": 0}) for m in metrics]
        filled = [e for e in per_fold if e["n"]]
        assert entry["n"] == sum(e["n"] for e in filled)
        if len(filled) > 1:
            assert entry["mean_accuracy"] == pytest.approx(statistics.mean(e["accuracy"] for e in filled))
            assert entry["std_accuracy"] == pytest.approx(statistics.stdev(e["accuracy"] for e in filled))
    assert agg["by_age"]["unknown"]["n"] > 0


# ----------------------------------------------------------------------------- train / evaluate
def _train_args(slim_t7: str, records: str, output: str) -> list[str]:
    # Slim random backbone trained whole, small batches, one epoch, a checkpoint every 3 steps
    # (4 steps an epoch: one checkpoint inside the epoch, one at its end).
    return ["train", "-w", slim_t7, "-i", records, "-o", output, "-e", "1", "-b1", "8", "--freeze-through", "none",
            "--no-augment", "--learning-rate", "3e-4", "--checkpoint-every", "3"]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def cross_validation(folds_records, slim_t7, tmp_path_factory) -> dict:
    """train --folds killed inside fold 2 (in-process, after its first checkpoint), then the same
    command run again (it must skip folds 0-1 and resume fold 2), then evaluate --folds."""
    from model.training.folds import train_folds
    from model.training import TrainConfig

    records, _ = folds_records
    output = str(tmp_path_factory.mktemp("cv") / "model.keras")
    # What the command below builds from its flags (TrainConfig has the CLI's defaults).
    config = TrainConfig(weights=slim_t7, records=records, output=output, epochs=1, batch_size=8,
                         augment=False, freeze_through="none", learning_rate=3e-4, checkpoint_every_steps=3)

    class Killed(Exception):
        pass

    current = {}

    def kill_in_fold_2(event) -> None:
        from model.training.events import CheckpointSaved, FoldStart

        if isinstance(event, FoldStart):
            current["fold"] = event.fold
        if isinstance(event, CheckpointSaved) and current.get("fold") == 2:
            raise Killed

    with pytest.raises(Killed):
        train_folds(config, progress=kill_in_fold_2)
    before = {k: open(output.replace(".keras", f"_fold{k}.keras"), "rb").read() for k in (0, 1)}
    assert not os.path.exists(output.replace(".keras", "_fold2.keras"))
    trained = _run(_train_args(slim_t7, records, output) + ["--folds"])
    report_dir = os.path.join(os.path.dirname(output), "cv_report")
    evaluated = _run(["evaluate", "--folds", "-m", output, "-i", records, "--report-dir", report_dir])
    return {"output": output, "records": records, "before": before, "train": trained.stdout,
            "evaluate": evaluated.stdout, "report_dir": report_dir}


def test_train_folds_skips_finished_folds_and_resumes_the_interrupted_one(cross_validation):
    out, output = cross_validation["train"], cross_validation["output"]
    for k in (0, 1):
        assert f"== fold {k}: already trained (1 epochs" in out
        assert open(output.replace(".keras", f"_fold{k}.keras"), "rb").read() == cross_validation["before"][k]
    assert "== fold 2: train on the other folds, validate on fold2" in out
    assert "resumed from" in out and "model_fold2.ckpt/ckpt-3: epoch 1, after step 3" in out
    for k in (3, 4):
        assert f"== fold {k}: train on the other folds, validate on fold{k}" in out
    assert out.count("splits: training on") == 3 and "training on fold0+fold1+fold2+fold3, validating on fold4" in out
    summary = json.load(open(output.replace(".keras", "_folds.json")))
    assert [r["fold"] for r in summary["folds"]] == list(range(N_FOLDS))
    assert [r["skipped"] for r in summary["folds"]] == [True, True, False, False, False]
    assert summary["folds"][2]["resumed"] is True
    assert all(r["val_count"] == 8 for r in summary["folds"])
    accuracies = [r["val_accuracy"] for r in summary["folds"]]
    assert summary["val_accuracy"]["mean"] == pytest.approx(statistics.mean(accuracies))
    assert summary["val_accuracy"]["std"] == pytest.approx(statistics.stdev(accuracies))
    assert summary["summary"] in out
    for k in range(N_FOLDS):
        assert os.path.exists(output.replace(".keras", f"_fold{k}.keras"))
        assert os.path.isdir(output.replace(".keras", f"_fold{k}.ckpt"))


def test_cv_report_agrees_with_the_per_fold_reports(cross_validation):
    report_dir = cross_validation["report_dir"]
    cv = json.load(open(os.path.join(report_dir, "cv_report.json")))
    per_fold = []
    for k, split in enumerate(FOLD_SPLITS):
        report = json.load(open(os.path.join(report_dir, split, "report.json")))
        assert report["splits"] == [split]          # fold K's model on fold K only
        assert report["model"] == cross_validation["output"].replace(".keras", f"_fold{k}.keras")
        m = report[split]
        assert m["n"] == 8 and "by_age" in m and m["worst_age_group"] is not None
        entry = cv["folds"][k]
        assert (entry["fold"], entry["split"], entry["n"]) == (k, split, m["n"])
        assert (entry["accuracy"], entry["loss"], entry["auc"]) == (m["accuracy"], m["loss"], m["auc"])
        assert os.path.exists(os.path.join(report_dir, split, f"{split}_age_accuracy.png"))
        per_fold.append(m)
    accuracies = [m["accuracy"] for m in per_fold]
    assert cv["accuracy"]["mean"] == pytest.approx(float(np.mean(accuracies)))
    assert cv["accuracy"]["std"] == pytest.approx(float(np.std(accuracies, ddof=1)))
    assert cv["loss"]["mean"] == pytest.approx(float(np.mean([m["loss"] for m in per_fold])))
    assert cv["loss"]["std"] == pytest.approx(float(np.std([m["loss"] for m in per_fold], ddof=1)))
    assert "ddof=1" in cv["std_definition"]
    correct = sum(round(m["accuracy"] * m["n"]) for m in per_fold)
    assert cv["pooled"] == {"n": 40, "correct": correct, "accuracy": pytest.approx(correct / 40)}
    for group, entry in cv["by_age"].items():
        filled = [m["by_age"][group] for m in per_fold if m["by_age"].get(group, {"n": 0})["n"]]
        assert entry["n"] == sum(e["n"] for e in filled) and entry["n_folds"] == len(filled)
        if filled:
            assert entry["mean_accuracy"] == pytest.approx(float(np.mean([e["accuracy"] for e in filled])))
            assert entry["pooled_accuracy"] == pytest.approx(
                sum(round(e["accuracy"] * e["n"]) for e in filled) / entry["n"])
        if len(filled) > 1:
            assert entry["std_accuracy"] == pytest.approx(float(np.std([e["accuracy"] for e in filled], ddof=1)))
    assert cv["by_age"]["unknown"]["n"] == 4          # the "None" ages of the fold files
    for name in ("cv_accuracy.png", "cv_age_accuracy.png"):
        with open(os.path.join(report_dir, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    mean, std = cv["accuracy"]["mean"], cv["accuracy"]["std"]
    assert f"5-fold accuracy {mean:.4f} ± {std:.4f}" in cross_validation["evaluate"]
    assert cv["summary"] in cross_validation["evaluate"]


def test_evaluate_one_fold_with_split(cross_validation, tmp_path, capsys):
    output, records = cross_validation["output"], cross_validation["records"]
    model = output.replace(".keras", "_fold3.keras")
    assert cli.main(["evaluate", "-m", model, "-i", records, "--split", "fold3", "--report-dir", str(tmp_path)]) == 0
    single = json.load(open(tmp_path / "report.json"))["fold3"]
    from_cv = json.load(open(os.path.join(cross_validation["report_dir"], "fold3", "report.json")))["fold3"]
    assert (single["n"], single["accuracy"], single["loss"]) == (from_cv["n"], from_cv["accuracy"], from_cv["loss"])
    assert "fold3: n=8" in capsys.readouterr().out


def test_train_val_fold(folds_records, slim_t7, tmp_path, capsys):
    records, _ = folds_records
    output = str(tmp_path / "one_split.keras")
    assert cli.main(_train_args(slim_t7, records, output) + ["--val-fold", "1"]) == 0
    out = capsys.readouterr().out
    assert "splits: training on fold0+fold2+fold3+fold4, validating on fold1" in out
    assert "data: 32 training / 8 validation images (64x64)" in out and "validation (8 images)" in out
    assert os.path.exists(output)


@pytest.mark.parametrize("case", ["val_fold_on_aligned_valid", "val_fold_7", "folds_records_without_val_fold",
                                  "folds_on_aligned_valid", "evaluate_folds_on_aligned_valid",
                                  "evaluate_folds_missing_models", "evaluate_folds_with_split"])
def test_bad_input_is_one_line_and_exit_2(case, folds_records, aligned_valid_records, slim_t7, tmp_path, capsys):
    records, _ = folds_records
    _, av_records = aligned_valid_records
    output = str(tmp_path / "m.keras")
    argv, expected = {
        "val_fold_on_aligned_valid": (_train_args(slim_t7, av_records, output) + ["--val-fold", "1"],
                                      "need records of the official Adience folds"),
        "val_fold_7": (_train_args(slim_t7, records, output) + ["--val-fold", "7"], "--val-fold must be one of 0 … 4"),
        "folds_records_without_val_fold": (_train_args(slim_t7, records, output), "pass --val-fold K"),
        "folds_on_aligned_valid": (_train_args(slim_t7, av_records, output) + ["--folds"],
                                   "need records of the official Adience folds"),
        "evaluate_folds_on_aligned_valid": (["evaluate", "--folds", "-m", output, "-i", av_records],
                                            "--folds needs records of the official Adience folds"),
        "evaluate_folds_missing_models": (["evaluate", "--folds", "-m", output, "-i", records],
                                          "m_fold0.keras, m_fold1.keras"),
        "evaluate_folds_with_split": (["evaluate", "--folds", "--split", "fold1", "-m", output, "-i", records],
                                      "drop --split"),
    }[case]
    assert cli.main(argv) == 2
    assert expected in one_error_line(capsys)
    assert os.listdir(tmp_path) == []          # nothing written


def test_a_fold_is_finished_only_for_the_fingerprint_train_would_resume(cross_validation, slim_t7):
    """The machine-derived part of the fingerprint (global batch, loss scaling) counts too: a fold
    trained on one replica is not "finished" for a run on two, which `train` would refuse to resume."""
    from model.training.folds import _fold_complete, fold_config
    from model.network.backbone import read_vggface_widths
    from model.training import TrainConfig, checkpoint_state, machine_of

    config = TrainConfig(weights=slim_t7, records=cross_validation["records"], output=cross_validation["output"],
                         epochs=1, batch_size=8, augment=False, freeze_through="none", learning_rate=3e-4,
                         checkpoint_every_steps=3)
    fold = fold_config(config, 0)
    state = checkpoint_state(fold.resolved_checkpoint_dir())
    replicas = state["fingerprint"]["global_batch_size"] // config.batch_size
    widths = read_vggface_widths(slim_t7)
    assert _fold_complete(fold, state, machine_of(fold, widths, replicas, 1, "float32"))
    assert not _fold_complete(fold, state, machine_of(fold, widths, 2 * replicas, 1, "float32"))
    assert not _fold_complete(fold, state, machine_of(fold, widths, replicas, 1, "mixed_float16"))
    assert not _fold_complete(fold, state, machine_of(fold, widths, replicas, 2, "float32"))
