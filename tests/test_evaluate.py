"""`evaluate`: report numbers against an independent computation, plots, predictions.csv, invariance
to batch size / memory mode / strategy, classify == evaluate on the same file, bad input."""
from __future__ import annotations

import csv
import json
import os
import subprocess

import numpy as np
import pytest

from tests.conftest import CLI

LABELS = ("female", "male")
# The eight Adience groups, written out again here (not imported) so the test checks the code.
GROUPS = {"0-2": (0, 2), "4-6": (4, 6), "8-13": (8, 13), "15-20": (15, 20), "25-32": (25, 32),
          "38-43": (38, 43), "48-53": (48, 53), "60+": (60, 10_000)}


def _group_of(age: int) -> str:
    """Nearest group by distance to its closest bound; a tie goes to the older group; -1 unknown."""
    if age == -1:
        return "unknown"

    def key(item):
        low, high = item[1]
        distance = 0 if low <= age <= high else min(abs(age - low), abs(age - high))
        return (distance, -low)
    return min(GROUPS.items(), key=key)[0]


def _rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos * n_neg), ties counted one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def report_dir(classifier_path, records_dir, tmp_path_factory) -> str:
    """`cli.py evaluate --split all` run in process (batch 16, low memory)."""
    import cli

    out = str(tmp_path_factory.mktemp("eval_report") / "report")
    status = cli.main(["evaluate", "-m", classifier_path, "-i", records_dir, "--split", "all",
                       "--report-dir", out, "-b", "16"])
    assert status == 0
    return out


@pytest.fixture(scope="module")
def report(report_dir) -> dict:
    with open(os.path.join(report_dir, "report.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def csv_rows(report_dir) -> list[dict]:
    with open(os.path.join(report_dir, "predictions.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def records_truth(records_dir) -> dict[str, dict[str, dict]]:
    """split -> path -> {label, age, image}: read straight from the TFRecord files."""
    import tensorflow as tf

    from pipeline.records import decode_example

    with open(os.path.join(records_dir, "manifest.json")) as f:
        manifest = json.load(f)
    truth = {}
    for split, info in manifest["splits"].items():
        truth[split] = {}
        for shard in info["shards"]:
            for raw in tf.data.TFRecordDataset(os.path.join(records_dir, shard)).as_numpy_iterator():
                ex = decode_example(raw)
                truth[split][ex["path"]] = ex
    return truth


# ------------------------------------------------------------------ report content
def test_every_record_scored_once_with_its_own_label_and_age(report, csv_rows, records_truth):
    assert report["splits"] == [s for s in ("train", "valid") if s in records_truth]
    for split, truth in records_truth.items():
        rows = [r for r in csv_rows if r["split"] == split]
        assert report[split]["n"] == len(rows) == len(truth)
        assert sorted(r["path"] for r in rows) == sorted(truth)
        for r in rows:
            ex = truth[r["path"]]
            assert r["label"] == LABELS[ex["label"]]
            assert int(r["age"]) == ex["age"]
            assert r["age_group"] == _group_of(ex["age"])
            assert r["predicted"] == LABELS[int(float(r["score"]) > 0.5)]


def test_scores_are_the_models_output_for_that_record(model, csv_rows, records_truth):
    rows = [r for r in csv_rows if r["split"] == "valid"][:12]
    images = np.stack([records_truth["valid"][r["path"]]["image"] for r in rows])
    direct = np.asarray(model(images, training=False)).reshape(-1)
    np.testing.assert_allclose([float(r["score"]) for r in rows], direct, atol=1e-5)


def _check_against_direct(got: dict, y: np.ndarray, p: np.ndarray, ages: np.ndarray) -> None:
    """Every number of one split's report entry against numpy written here."""
    pred = (p > 0.5).astype(int)
    assert got["n"] == len(y)
    assert got["threshold"] == 0.5
    assert got["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    q = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    assert got["loss"] == pytest.approx(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)), abs=1e-6)
    tn, fp = int(np.sum((y == 0) & (pred == 0))), int(np.sum((y == 0) & (pred == 1)))
    fn, tp = int(np.sum((y == 1) & (pred == 0))), int(np.sum((y == 1) & (pred == 1)))
    assert got["confusion_matrix"] == [[tn, fp], [fn, tp]]
    for k, name in enumerate(LABELS):
        predicted_k, true_k = np.sum(pred == k), np.sum(y == k)
        hits = np.sum((pred == k) & (y == k))
        precision = hits / predicted_k if predicted_k else 0.0
        recall = hits / true_k if true_k else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert got["precision"][name] == pytest.approx(precision, abs=1e-12)
        assert got["recall"][name] == pytest.approx(recall, abs=1e-12)
        assert got["f1"][name] == pytest.approx(f1, abs=1e-12)
        assert got["by_gender"][name]["n"] == true_k
        assert got["by_gender"][name]["accuracy"] == pytest.approx(np.mean(pred[y == k] == k), abs=1e-12)
    assert got["auc"] == pytest.approx(_rank_auc(y, p), abs=1e-9)

    groups = np.array([_group_of(int(a)) for a in ages])
    present_unknown = ["unknown"] if "unknown" in groups else []
    assert list(got["by_age"]) == list(GROUPS) + present_unknown
    for name in list(GROUPS) + present_unknown:
        entry, mask = got["by_age"][name], groups == name
        assert entry["n"] == int(mask.sum())
        if mask.any():
            assert entry["accuracy"] == pytest.approx(np.mean(pred[mask] == y[mask]), abs=1e-12)
        else:
            assert entry["accuracy"] is None
        for k, gender in enumerate(LABELS):
            sub = mask & (y == k)
            assert entry["by_gender"][gender]["n"] == int(sub.sum())
            if sub.any():
                assert entry["by_gender"][gender]["accuracy"] == pytest.approx(np.mean(pred[sub] == k), abs=1e-12)
    filled = {g: got["by_age"][g]["accuracy"] for g in GROUPS if got["by_age"][g]["n"]}
    assert got["worst_age_group"]["accuracy"] == pytest.approx(min(filled.values()))
    assert got["worst_age_group"]["group"] in [g for g, a in filled.items() if a == min(filled.values())]


@pytest.mark.parametrize("split", ["train", "valid"])
def test_report_numbers_match_a_direct_computation(report, csv_rows, records_truth, split):
    rows = [r for r in csv_rows if r["split"] == split]
    y = np.array([records_truth[split][r["path"]]["label"] for r in rows])
    ages = np.array([records_truth[split][r["path"]]["age"] for r in rows])
    p = np.array([float(r["score"]) for r in rows], np.float32)
    _check_against_direct(report[split], y, p, ages)


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_of_an_imperfect_model_match_a_direct_computation(seed):
    """The trained model is (near) perfect on the generated data; here scores err often, tie often
    (AUC's tie rule), hit the threshold exactly, and ages fall between groups and outside them."""
    from model.evaluation.evaluate import split_metrics

    rng = np.random.default_rng(seed)
    n = 500
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1)
    p = (np.round(p * 40) / 40).astype(np.float32)          # many ties, some exactly 0.5
    ages = rng.choice([-1, 0, 1, 3, 5, 7, 10, 14, 18, 22, 24, 30, 35, 40, 45, 50, 57, 60, 80], n)
    _check_against_direct(split_metrics(y, p, ages), y, p, ages)


def test_report_states_the_age_rule(report):
    rule = report["age_group_rule"].lower()
    assert "nearer" in rule or "nearest" in rule
    assert "older" in rule


def test_plots_are_png_files_with_content(report, report_dir):
    plots = report["files"]["plots"]
    assert set(plots) == set(report["splits"])
    for split, files in plots.items():
        assert set(files) == {"roc", "confusion", "age_accuracy", "score_hist", "reliability"}
        for name in files.values():
            path = os.path.join(report_dir, name)
            with open(path, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
            assert os.path.getsize(path) > 10_000


def test_predictions_csv_has_header_and_one_row_per_example(report_dir, report, csv_rows):
    with open(os.path.join(report_dir, "predictions.csv")) as f:
        header = f.readline().strip().split(",")
    assert header[1:] == ["path", "age", "age_group", "label", "score", "predicted"]
    assert len(csv_rows) == sum(report[s]["n"] for s in report["splits"])


# ------------------------------------------------------------------ invariance
@pytest.mark.parametrize("batch_size,memory,strategy", [(7, "low", None), (64, "high", None),
                                                         (5, "low", "mirrored")])
def test_same_scores_whatever_batch_size_memory_mode_or_strategy(model, records_dir, csv_rows,
                                                                 batch_size, memory, strategy):
    from model.evaluation.evaluate import predict_split, split_metrics
    from model.runtime import select_strategy

    chosen = select_strategy(strategy) if strategy else None
    if chosen is not None:
        assert chosen.num_replicas_in_sync == 2     # conftest's two logical CPU devices
    got = predict_split(model, records_dir, "valid", batch_size=batch_size, memory=memory, strategy=chosen)
    reference = {r["path"]: float(r["score"]) for r in csv_rows if r["split"] == "valid"}
    assert sorted(got.paths) == sorted(reference)          # every example exactly once
    diff = max(abs(float(s) - reference[p]) for p, s in zip(got.paths, got.scores))
    assert diff <= 1e-6
    order = [got.paths.index(p) for p in reference]
    base = split_metrics(got.labels[order], np.array(list(reference.values()), np.float32), got.ages[order])
    again = split_metrics(got.labels, got.scores, got.ages)
    assert again["accuracy"] == pytest.approx(base["accuracy"], abs=1e-6)
    assert again["loss"] == pytest.approx(base["loss"], abs=1e-6)
    assert again["confusion_matrix"] == base["confusion_matrix"]


# ------------------------------------------------------------------ serving sees training's pixels
def test_classify_scores_equal_evaluate_scores_for_the_original_files(model, adience_root, csv_rows):
    from model.inference.classify import classify_files

    root, _ = adience_root
    rows = [r for r in csv_rows if r["split"] == "valid"]
    results = classify_files(model, [os.path.join(root, r["path"]) for r in rows], batch_size=16)
    assert all(res.error is None for res in results)
    got = np.array([res.score for res in results])
    want = np.array([float(r["score"]) for r in rows])
    assert np.max(np.abs(got - want)) <= 1e-5
    assert [res.label for res in results] == [r["predicted"] for r in rows]


# ------------------------------------------------------------------ degenerate cases
def test_one_class_only_gives_null_auc_with_a_note_and_empty_groups_n0():
    from model.evaluation.evaluate import split_metrics

    m = split_metrics(np.ones(4, int), np.array([0.9, 0.2, 0.6, 0.7], np.float32), np.array([30, 30, 31, 28]))
    assert m["auc"] is None and "male" in m["auc_note"]
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[0, 0], [1, 3]]
    assert m["by_age"]["0-2"] == {"n": 0, "accuracy": None,
                                  "by_gender": {"female": {"n": 0, "accuracy": None},
                                                "male": {"n": 0, "accuracy": None}}}
    assert m["by_gender"]["female"] == {"n": 0, "accuracy": None}
    assert m["worst_age_group"] == {"group": "25-32", "accuracy": 0.75, "n": 4}


def test_age_between_groups_goes_to_the_nearest_ties_older():
    from model.evaluation.evaluate import split_metrics

    ages = np.array([3, 7, 14, 22, 35, 45, 57])
    m = split_metrics(np.zeros(len(ages), int), np.zeros(len(ages), np.float32), ages)
    counts = {g: e["n"] for g, e in m["by_age"].items() if e["n"]}
    assert counts == {g: int(sum(_group_of(a) == g for a in ages)) for g in counts}
    # 3, 7, 14, 35: equidistant, to the older group; 22 -> 15-20 (2 < 3); 45 -> 38-43; 57 -> 60+.
    assert counts == {"4-6": 1, "8-13": 1, "15-20": 2, "38-43": 2, "60+": 1}
    assert "unknown" not in m["by_age"]


def test_unknown_ages_get_their_own_entry_but_are_never_the_worst_group():
    from model.evaluation.evaluate import split_metrics

    m = split_metrics(np.array([0, 1, 1, 0]), np.array([0.9, 0.9, 0.9, 0.1], np.float32),
                      np.array([-1, -1, 30, 30]))
    assert m["by_age"]["unknown"]["n"] == 2 and m["by_age"]["unknown"]["accuracy"] == 0.5
    assert m["worst_age_group"] == {"group": "25-32", "accuracy": 1.0, "n": 2}


# ------------------------------------------------------------------ command line and bad input
def test_cli_prints_summary_and_defaults_the_report_beside_the_model(classifier_path, records_dir, tmp_path):
    model_copy = tmp_path / "my_model.keras"
    model_copy.write_bytes(open(classifier_path, "rb").read())
    proc = subprocess.run([*CLI, "evaluate", "-m", str(model_copy), "-i", records_dir, "-b", "32"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report_dir = tmp_path / "my_model_report"
    report = json.loads((report_dir / "report.json").read_text())
    assert report["splits"] == ["valid"]
    base = report["valid"]["majority_baseline"]
    assert (f"valid: n={report['valid']['n']}  accuracy={report['valid']['accuracy']:.4f} "
            f"(always {base['class']}: {base['accuracy']:.4f})") in proc.stdout
    filled = [e["accuracy"] for g, e in report["valid"]["by_age"].items() if e["n"] and g in GROUPS]
    if len(set(filled)) > 1:
        assert f"worst age group: {report['valid']['worst_age_group']['group']}" in proc.stdout
    else:
        assert f"every age group ({len(filled)} with examples) at accuracy" in proc.stdout
    assert str(report_dir / "report.json") in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def vggface_keras(tmp_path_factory) -> str:
    from model.network.vggface import SLIM_WIDTHS, build_vggface

    path = str(tmp_path_factory.mktemp("vgg") / "vggface.keras")
    build_vggface(SLIM_WIDTHS).save(path)
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("case", ["vggface", "missing_model", "missing_records", "bad_split", "cluster"])
def test_bad_input_is_one_line_and_exit_2(case, classifier_path, vggface_keras, records_dir, tmp_path, capsys,
                                          monkeypatch):
    import cli

    if case == "cluster":   # a TF_CONFIG left over from multi-worker training
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                    "task": {"type": "worker", "index": 0}}))

    args = {"vggface": ["-m", vggface_keras, "-i", records_dir],
            "missing_model": ["-m", str(tmp_path / "nope.keras"), "-i", records_dir],
            "missing_records": ["-m", classifier_path, "-i", str(tmp_path / "no_records")],
            "bad_split": ["-m", classifier_path, "-i", records_dir, "--split", "test"],
            "cluster": ["-m", classifier_path, "-i", records_dir]}[case]
    assert cli.main(["evaluate", *args, "--report-dir", str(tmp_path / "r")]) == 2
    line = _one_line_error(capsys)
    expected = {"vggface": "not a gender classifier", "missing_model": "does not exist",
                "missing_records": "does not exist", "bad_split": "no split 'test'",
                "cluster": "one machine"}[case]
    assert expected in line
    assert not os.path.exists(tmp_path / "r")


def test_summary_names_the_worst_age_group_with_its_accuracy_and_count():
    from cli_render import evaluate_summary_lines as summary_lines
    from model.evaluation.evaluate import split_metrics

    m = split_metrics(np.array([0, 1, 0, 1, 1]), np.array([0.1, 0.9, 0.8, 0.2, 0.7], np.float32),
                      np.array([1, 1, 30, 30, 30]))
    lines = summary_lines({"splits": ["valid"], "valid": m}, "somewhere")
    assert lines[0] == ("valid: n=5  accuracy=0.6000 (always male: 0.6000)  loss="
                        + f"{m['loss']:.4f}  auc={m['auc']:.4f}")
    assert lines[1] == "  worst age group: 25-32 accuracy=0.3333 (n=3)"
    assert lines[-1].startswith(f"report: {os.path.join('somewhere', 'report.json')}")
    assert not any("collapsed" in line for line in lines)


def test_majority_baseline_and_a_collapsed_model_are_said():
    """A model that answers one class for everyone is said plainly; its accuracy is the baseline's."""
    from cli_render import evaluate_summary_lines as summary_lines
    from model.evaluation.evaluate import split_metrics

    labels = np.array([0, 0, 0, 1])
    m = split_metrics(labels, np.full(4, 0.5, np.float32), np.array([30, 30, 30, 30]))
    assert m["majority_baseline"] == {"class": "female", "accuracy": 0.75}
    assert m["one_class_predictions"] == "female" and m["accuracy"] == 0.75
    lines = summary_lines({"splits": ["valid"], "valid": m}, "somewhere")
    assert "(always female: 0.7500)" in lines[0]
    assert lines[1].startswith("  warning: every prediction is female: the model has collapsed to one class")
    mixed = split_metrics(labels, np.array([0.1, 0.2, 0.9, 0.8], np.float32), np.array([30] * 4))
    assert mixed["one_class_predictions"] is None


def test_library_refuses_unknown_memory_mode_and_batch_size(classifier_path, records_dir):
    from model.evaluation.evaluate import evaluate
    from pipeline.errors import DataError

    with pytest.raises(DataError, match="unknown memory mode 'medium'"):
        evaluate(classifier_path, records_dir, memory="medium")
    with pytest.raises(DataError, match="batch size must be positive"):
        evaluate(classifier_path, records_dir, batch_size=0)
