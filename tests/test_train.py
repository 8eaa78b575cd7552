"""The `train` command end to end: preprocess -> train learns the generated set; kill -9 and rerun
resumes exactly; outputs (model, SavedModel, history, logs); bad input is one line and exit 2."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import cli
from model.training import HISTORY_FIELDS, TrainConfig, train
from tests.conftest import CLI, ROOT

DIGEST = re.compile(r"^final weights digest: ([0-9a-f]{64})$", re.M)


def _train_command(slim_t7: str, records: str, output: str) -> list[str]:
    # The product's defaults (frozen through relu4_2, augmentation on), small batches, two epochs,
    # a checkpoint every 3 steps (7 steps an epoch): checkpoints inside both epochs.
    return [*CLI, "train", "-w", slim_t7, "-i", records, "-o", output, "-e", "2", "-b1", "16",
            "--checkpoint-every", "3"]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def command_run(adience_root, slim_t7, tmp_path_factory) -> dict:
    """preprocess then train through the command, uninterrupted."""
    root, _ = adience_root
    work = tmp_path_factory.mktemp("train_cli")
    records = str(work / "records")
    _run([*CLI, "preprocess", "-i", root, "-o", records, "--train-shards", "3", "--valid-shards", "2",
          "--direct_num_workers=1", "--direct_running_mode=in_memory"])
    output = str(work / "full" / "gender_classifier.keras")
    done = _run(_train_command(slim_t7, records, output))
    return {"records": records, "output": output, "stdout": done.stdout,
            "digest": DIGEST.search(done.stdout).group(1), "work": work}


def _history(output: str) -> list[dict]:
    with open(output[: -len(".keras")] + "_history.csv") as f:
        return list(csv.DictReader(f))


def test_preprocess_then_train_learns_the_generated_set(command_run):
    out, output = command_run["stdout"], command_run["output"]
    assert "strategy: default, 1 replica(s) on 1 worker(s); precision: float32" in out
    assert "120 training / 40 validation images (224x224); batch 16 per replica = 16 global, 7 steps" in out
    assert "augmentation on" in out and "resumed" not in out
    # The cut layer's feature scale, measured at set-up: the generated weights' is the real network's.
    rms = float(re.search(r"^features: relu4_2 RMS ([\d.e+]+) \(max [\d.e+]+, over 120 training images\); "
                          r"standardized per feature inside the model$", out, re.M).group(1))
    assert 10 <= rms <= 100
    assert "warning" not in out
    assert len(re.findall(r"^epoch 2/2 step \d+/7: loss [\d.]+, acc [\d.]+%, [\d,]+ img/s$", out, re.M)) >= 2
    assert len(re.findall(r"^epoch \d: .* validation \(40 images\)", out, re.M)) == 2
    rows = _history(output)
    # Epoch 0: validation before the first step (the linear start), no training figures.
    assert [row["epoch"] for row in rows] == ["0", "1", "2"] and list(rows[0]) == list(HISTORY_FIELDS)
    assert rows[0]["loss"] == "" and 0.0 <= float(rows[0]["val_accuracy"]) <= 1.0
    assert float(rows[-1]["val_accuracy"]) >= 0.95, rows
    start = re.search(r"^before training: the linear start gives ([\d.]+)% on validation \(40 images", out, re.M)
    assert float(start.group(1)) == pytest.approx(100 * float(rows[0]["val_accuracy"]), abs=0.01)
    stem = output[: -len(".keras")]
    for path in (output, stem + "_savedmodel/saved_model.pb", stem + ".ckpt/checkpoint"):
        assert os.path.exists(path), path
    events = [os.path.join(stem + "_logs", name) for name in os.listdir(stem + "_logs")]
    tags = {value.tag for path in events for event in tf.compat.v1.train.summary_iterator(path)
            for value in event.summary.value}
    assert {"train/loss", "train/accuracy", "train/images_per_s", "epoch/val_accuracy"} <= tags
    assert f"model: {output}" in out and f"TF Serving export: {stem}_savedmodel" in out


def test_kill_then_rerun_resumes_exactly(command_run, slim_t7):
    """SIGKILL after a checkpoint inside epoch 2, rerun the same command: it says it resumed, and
    the final weights are bit-identical to the uninterrupted run's (same seed)."""
    output = str(command_run["work"] / "killed" / "gender_classifier.keras")
    command = _train_command(slim_t7, command_run["records"], output)
    victim = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = []
    try:
        for line in victim.stdout:
            seen.append(line)
            if re.match(r"checkpoint .*ckpt-9 \(epoch 2, step 2\)", line):
                victim.send_signal(signal.SIGKILL)
                break
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()
    assert victim.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    assert not os.path.exists(output)                      # killed before writing any output

    done = _run(command)
    match = re.search(r"^resumed from \S+ckpt-(\d+): epoch 2, after step (\d+) ", done.stdout, re.M)
    assert match, done.stdout
    assert int(match.group(1)) >= 9 and int(match.group(2)) >= 2
    # Only the remaining steps ran: none of epoch 1, none of epoch 2 before the checkpoint.
    assert "epoch 1/2 step" not in done.stdout and "epoch 2/2 step 1/7" not in done.stdout
    assert DIGEST.search(done.stdout).group(1) == command_run["digest"]
    # The history is whole and equal too: epoch 1 from the checkpoint, epoch 2's sums continued.
    keys = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
    assert [[r[k] for k in keys] for r in _history(output)] == \
        [[r[k] for k in keys] for r in _history(command_run["output"])]


def test_rerun_after_completion_only_rewrites_outputs(command_run, slim_t7):
    done = _run(_train_command(slim_t7, command_run["records"], command_run["output"]))
    assert "training already complete (2 epochs)" in done.stdout
    assert " step " not in done.stdout.split("resumed from")[1]
    assert DIGEST.search(done.stdout).group(1) == command_run["digest"]


def _main(argv: list[str], capsys) -> tuple[int, str]:
    status = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return status, err


def test_bad_input_is_one_line_and_exit_2(tmp_path, slim_t7, records_dir, adience_root, capsys):
    out = str(tmp_path / "m.keras")
    cases = [
        (["-w", slim_t7, "-i", str(tmp_path / "nowhere"), "-o", out], "does not exist"),
        (["-w", slim_t7, "-i", adience_root[0], "-o", out], "run `python cli.py preprocess"),
        (["-w", str(tmp_path / "VGG_FACE.t7"), "-i", records_dir, "-o", out], "weights file"),
        (["-w", slim_t7, "-i", records_dir, "-o", str(tmp_path / "m.h5")], "must end in .keras"),
        (["-w", slim_t7, "-i", records_dir, "-o", out, "-e", "0"], "-e/--epochs"),
        (["-w", slim_t7, "-i", records_dir, "-o", out, "-b1", "500"], "fewer than one global batch"),
        (["-w", slim_t7, "-i", records_dir, "-o", out, "--cut-layer", "layer30"], "valid layer names: preprocess, conv1_1"),
    ]
    for args, words in cases:
        status, err = _main(["train", *args], capsys)
        assert status == 2, (args, err)
        assert err.startswith("error: ") and "\n" not in err and words in err, (args, err)


def test_checkpoint_of_another_training_is_refused(tmp_path, slim_t7, records_dir, capsys):
    ckpt = str(tmp_path / "ckpt")
    first = train(TrainConfig(weights=slim_t7, records=records_dir, output=str(tmp_path / "a.keras"), epochs=1,
                              batch_size=40, augment=False, checkpoint_dir=ckpt, strategy="default",
                              precision="float32"))
    assert first.resumed_from is None and tf.train.latest_checkpoint(ckpt)
    status, err = _main(["train", "-w", slim_t7, "-i", records_dir, "-o", str(tmp_path / "b.keras"), "-b1", "40",
                         "--no-augment", "--checkpoint-dir", ckpt, "--cut-layer", "relu3_3",
                         "--freeze-through", "relu3_3", "--strategy", "default"], capsys)
    assert status == 2
    assert "holds a checkpoint of a different training (cut_layer 'relu4_2' -> 'relu3_3'" in err
    assert "use another --checkpoint-dir or delete" in err and "\n" not in err
    # Training longer with the same settings is allowed: it continues from the end of epoch 1.
    more = train(TrainConfig(weights=slim_t7, records=records_dir, output=str(tmp_path / "a.keras"), epochs=2,
                             batch_size=40, augment=False, checkpoint_dir=ckpt, strategy="default",
                             precision="float32"))
    assert more.resumed_from.epoch == 2 and more.resumed_from.step == 0
    assert [row["epoch"] for row in more.history] == [0, 1, 2] and more.steps_run == 3
    assert more.history[:2] == first.history[:2]


def test_frozen_layers_do_not_change(tmp_path, slim_t7, records_dir):
    from model.network.backbone import load_backbone
    from model.network.head import build_classifier, load_classifier

    result = train(TrainConfig(weights=slim_t7, records=records_dir, output=str(tmp_path / "m.keras"), epochs=1,
                               batch_size=32, augment=False, strategy="default", precision="float32"))
    trained = load_classifier(result.output)
    fresh = build_classifier(load_backbone(slim_t7))
    frozen = [layer.name for layer in fresh.layers if not layer.trainable and layer.weights]
    assert frozen[0] == "conv1_1" and frozen[-2:] == ["conv4_2", "head_standardize"]
    for name in frozen[:-1]:
        for before, after in zip(fresh.get_layer(name).get_weights(), trained.get_layer(name).get_weights()):
            np.testing.assert_array_equal(before, after)
    # The standardization was fixed once, before the first step, from the training images' features.
    stats = trained.get_layer("head_standardize")
    assert not np.allclose(stats.moving_mean.numpy(), 0.0) and not np.allclose(stats.moving_variance.numpy(), 1.0)
    for name in ("head_dense", "male_prob"):
        before, after = fresh.get_layer(name).get_weights()[0], trained.get_layer(name).get_weights()[0]
        assert not np.array_equal(before, after), name


def test_a_collapsed_model_is_said_by_train_and_evaluate(tmp_path, slim_t7):
    """Trained on female faces only, the model answers "female" for everyone: train warns after the
    epoch, and evaluate puts the majority-class baseline beside the accuracy and says so too."""
    import shutil

    from pipeline.preprocess.job import run_preprocess
    from pipeline.synthetic.tree import make_adience_tree

    root = tmp_path / "root"
    make_adience_tree(str(root), n_train=24, n_valid=10, image_size=48, seed=2, bad_files=False, variety=False)
    for folder in (root / "aligned").iterdir():
        if folder.name.endswith("_M"):
            shutil.rmtree(folder)
    records = str(tmp_path / "records")
    run_preprocess(str(root), records, image_size=32, beam_args=["--direct_num_workers=1",
                                                                 "--direct_running_mode=in_memory"])
    model = str(tmp_path / "m.keras")
    # A large step: one is enough to push every score to the only class seen (at 1e-4 the first
    # step leaves the random head's answers on faces unlike the training ones to chance).
    done = _run([*CLI, "train", "-w", slim_t7, "-i", records, "-o", model, "-b1", "8", "--no-augment",
                 "--learning-rate", "1e-2"])
    assert re.search(r"^warning: epoch 1: every validation prediction is female: the model answers one class "
                     r"for everyone \(collapsed\); lower --learning-rate", done.stdout, re.M), done.stdout
    done = _run([*CLI, "evaluate", "-m", model, "-i", records])
    assert "accuracy=0.5000 (always female: 0.5000)" in done.stdout
    assert "warning: every prediction is female: the model has collapsed to one class" in done.stdout


def test_collapse_is_one_class_or_a_loss_of_ln2():
    from model.training import collapse_reason

    assert collapse_reason(0.30, 0, 40) == "every validation prediction is female"
    assert collapse_reason(0.30, 40, 40) == "every validation prediction is male"
    assert "ln 2" in collapse_reason(0.6935, 17, 40)
    assert collapse_reason(0.6900, 17, 40) is None and collapse_reason(0.2, 1, 40) is None
