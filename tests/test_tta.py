"""Test-time augmentation (model/tta.py): `--tta flip` gives the mean of two separate model calls
(the face, and its mirror image) in `evaluate` (one device and two replicas) and `classify`; the
report, the model card, the summaries and classify's rows record the mode; a bad mode is one line.
(The SavedModel's `serve_images_flip`: tests/test_serving.py.)"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

# Flip TTA against two separate calls: the same float32 network on the same pixels, only batched
# differently (2B images in one call against B and B), so only summation order differs. Relative:
# the test model's scores are mostly within 1e-6 of 0 or 1, where an absolute tolerance could not
# tell a face's score from its mirror's (their relative difference there is tens of percent).
RTOL, ATOL = 1e-4, 1e-20


def _close(got, want) -> bool:
    return bool(np.allclose(np.asarray(got, np.float64), want, rtol=RTOL, atol=ATOL))


def _plain(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images, training=False), np.float64).reshape(-1)


def _two_calls(model, images: np.ndarray) -> np.ndarray:
    """The mean of two separate calls: the images, then their mirror images (numpy's own flip)."""
    return (_plain(model, images) + _plain(model, np.ascontiguousarray(images[:, :, ::-1]))) / 2


def _check_flip(model, images: np.ndarray, got) -> None:
    """`got` is the two calls' mean, and not what the images alone score (the check can fail)."""
    want = _two_calls(model, images)
    assert _close(got, want), np.max(np.abs(np.asarray(got) - want) / np.maximum(want, ATOL))
    assert not _close(_plain(model, images), want)


@pytest.fixture(scope="module")
def valid_images(records_dir) -> dict[str, np.ndarray]:
    """path -> uint8 image of the valid split, read straight from the TFRecord files."""
    import tensorflow as tf

    from pipeline.records import decode_example

    with open(os.path.join(records_dir, "manifest.json")) as f:
        shards = json.load(f)["splits"]["valid"]["shards"]
    images = {}
    for shard in shards:
        for raw in tf.data.TFRecordDataset(os.path.join(records_dir, shard)).as_numpy_iterator():
            example = decode_example(raw)
            images[example["path"]] = example["image"]
    return images


def test_flip_is_one_call_on_the_batch_and_its_mirror_averaged(model, valid_images):
    from model.tta import averaged

    # Faces whose left half is one face and right half another: their mirror images score far from them.
    faces = np.stack(list(valid_images.values())[:6])
    images = faces[:3].copy()
    images[:, :, 112:] = faces[3:, :, 112:]
    calls = []

    def probability(x):
        calls.append(int(x.shape[0]))
        return model(x, training=False)

    got = np.asarray(averaged(probability, images, "flip")).reshape(-1)
    assert calls == [6]                         # one forward pass over 2B images, not a loop
    _check_flip(model, images, got)
    assert np.max(np.abs(got - _plain(model, images))) > 1e-4
    assert _close(np.asarray(averaged(probability, images, "none")).reshape(-1), _plain(model, images))


@pytest.fixture(scope="module")
def flip_report_dir(classifier_path, records_dir, tmp_path_factory) -> tuple[str, str]:
    """`cli.py evaluate --tta flip` run in process: (report dir, its stdout)."""
    import contextlib
    import io

    import cli

    out = str(tmp_path_factory.mktemp("tta_report") / "report")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = cli.main(["evaluate", "-m", classifier_path, "-i", records_dir, "--report-dir", out,
                           "-b", "16", "--tta", "flip"])
    assert status == 0
    return out, stdout.getvalue()


def test_evaluate_flip_scores_are_the_mean_of_two_separate_calls(model, flip_report_dir, valid_images):
    with open(os.path.join(flip_report_dir[0], "predictions.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(valid_images)
    _check_flip(model, np.stack([valid_images[r["path"]] for r in rows]), [float(r["score"]) for r in rows])


def test_evaluate_flip_on_two_replicas_gives_the_same_scores(model, records_dir, flip_report_dir):
    from model.evaluation.evaluate import predict_split
    from model.runtime import select_strategy

    strategy = select_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2       # conftest's two logical CPU devices
    # 40 images in batches of 3 per replica: short last batches (and perhaps an empty one) too.
    got = predict_split(model, records_dir, "valid", batch_size=3, strategy=strategy, tta="flip")
    with open(os.path.join(flip_report_dir[0], "predictions.csv"), newline="") as f:
        reference = {r["path"]: float(r["score"]) for r in csv.DictReader(f)}
    assert sorted(got.paths) == sorted(reference)
    assert _close(got.scores, [reference[p] for p in got.paths])


def test_report_card_and_summary_record_the_mode(flip_report_dir):
    from model.tta import TTA_DESCRIPTIONS

    report_dir, stdout = flip_report_dir
    with open(os.path.join(report_dir, "report.json")) as f:
        report = json.load(f)
    assert report["tta"] == "flip" and report["tta_rule"] == TTA_DESCRIPTIONS["flip"]
    with open(os.path.join(report_dir, "model_card.md")) as f:
        assert f"- Test-time augmentation: {TTA_DESCRIPTIONS['flip']}." in f.read()
    assert "test-time augmentation: flip" in stdout.splitlines()


def test_report_records_none_by_default():
    from model.evaluation.evaluate import Evaluation, SplitPredictions, split_metrics
    from model.evaluation.report import build_report

    labels, ages = np.array([0, 1, 0, 1]), np.array([25, 30, 4, 60])
    scores = np.array([0.1, 0.9, 0.6, 0.7], np.float32)
    predictions = {"valid": SplitPredictions("valid", list("abcd"), labels, ages, scores)}
    evaluation = Evaluation("m.keras", "r", predictions, {"valid": split_metrics(labels, scores, ages)})
    assert build_report(evaluation)["tta"] == "none"


def test_classify_flip_is_the_mean_of_two_separate_calls_and_rows_say_so(model, classifier_path, adience_root,
                                                                         tmp_path, capsys):
    import cli
    from model.inference.classify import classify_files
    from pipeline.decode import load_image

    root, _ = adience_root
    paths = sorted(os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(root, "valid"))
                   for name in names if name.startswith("landmark_aligned_face."))[::5]
    rows = classify_files(model, paths, batch_size=4, tta="flip")
    assert [r.tta for r in rows] == ["flip"] * len(paths) and all(r.error is None for r in rows)
    images = np.stack([load_image(p, 224) for p in paths])
    _check_flip(model, images, [r.score for r in rows])

    out = tmp_path / "rows.csv"
    assert cli.main(["classify", "-m", classifier_path, "-i", *paths, "--faces", "aligned", "--tta", "flip",
                     "--format", "csv", "-o", str(out)]) == 0
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["tta"] for r in written] == ["flip"] * len(paths)
    _check_flip(model, images, [float(r["score"]) for r in written])
    assert "test-time augmentation: flip" in capsys.readouterr().err
    assert cli.main(["classify", "-m", classifier_path, "-i", paths[0], "--faces", "aligned", "--format", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == "none"
    # The original's one-image form: unchanged by default, one more line with flip.
    assert cli.main(["classify", "-m", classifier_path, "-i", paths[0], "--faces", "aligned", "--tta", "flip"]) == 0
    block = capsys.readouterr().out.splitlines()
    assert block[0] == block[-1] == "****" and block[1].startswith(f"output class is {rows[0].label}. (sigmoid value=")
    assert _close([float(block[1].rsplit("=", 1)[1].rstrip(")"))], [rows[0].score])
    assert block[2:-1] == ["test-time augmentation: flip"]


@pytest.mark.parametrize("command", ["evaluate", "classify"])
def test_a_bad_tta_value_is_argparses_one_line_error(command, capsys):
    import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "-m", "m.keras", "-i", "x", "--tta", "crops"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"{command}: error: argument --tta: invalid choice: 'crops'" in last and "none" in last


def test_the_library_refuses_an_unknown_mode_before_any_work(model):
    from model.evaluation.evaluate import evaluate
    from model.inference.classify import make_forward
    from pipeline.errors import DataError

    for call in (lambda: evaluate("missing.keras", "missing", tta="crops"), lambda: make_forward(model, "crops")):
        with pytest.raises(DataError, match="`tta` must be one of none, flip, got 'crops'") as err:
            call()
        assert err.value.field == "tta"


def test_classify_refuses_a_forward_pass_of_another_mode(model):
    from model.inference.classify import ClassifyStream, make_forward

    with pytest.raises(ValueError, match="scores with tta 'flip', not 'none'"):
        ClassifyStream(model, [], forward=make_forward(model, "flip"), tta="none")
    assert ClassifyStream(model, [], forward=make_forward(model, "flip"), tta="flip").tta == "flip"
