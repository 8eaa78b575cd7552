"""The training loop's guarantees: grouping steps into calls, XLA and device-side augmentation do not
change what is learned; resume stays exact with augmentation on the device; a non-finite loss stops
training with nothing saved; other records, or damaged ones, are refused with one line."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from model.training import TrainConfig, train
from model.training.events import CheckpointSaved
from tests.conftest import CLI, ROOT


def _config(weights: str, records: str, output: str, **overrides) -> TrainConfig:
    settings = dict(epochs=1, batch_size=16, augment=False, strategy="default", precision="float32")
    return TrainConfig(weights=weights, records=records, output=output, **{**settings, **overrides})


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_steps_per_call_do_not_change_what_is_learned(slim_t7, records_dir, tmp_path):
    """One step per call, several, and the automatic size run the same steps in the same order:
    bit-identical weights."""
    digests = {n: train(_config(slim_t7, records_dir, str(tmp_path / f"m{n}.keras"), steps_per_call=n,
                                augment=True)).weights_digest
               for n in (1, 3, None)}
    assert len(set(digests.values())) == 1, digests


def test_xla_step_gives_the_same_training_within_tolerance(slim_t7, records_dir, tmp_path):
    """--jit on against off: the same losses to 1e-4 relative and the same weights to 1e-5, a tenth of
    one of Adam's 1e-4 steps (measured: 3.6e-6 at most). From the linear start many gradients are
    near zero, where Adam's m/sqrt(v) turns a kernel's rounding into a visible part of a step; a
    real difference in the step (a wrong sign, a lost term) moves weights by whole steps.
    Without dropout: under XLA, TensorFlow's stateless random ops may pick another generator
    algorithm, so dropout draws other masks — the same distribution, not the same numbers."""
    runs = {}
    for jit in ("off", "on"):
        result = train(_config(slim_t7, records_dir, str(tmp_path / f"{jit}.keras"), jit=jit, epochs=2, dropout=0.0))
        from model.network.head import load_classifier

        runs[jit] = (result.history, load_classifier(result.output).get_weights())
    (history_off, weights_off), (history_on, weights_on) = runs["off"], runs["on"]
    for row_off, row_on in zip(history_off, history_on):
        for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
            if row_off[key] is None:  # epoch 0 (the linear start) trains no step: no training loss
                assert row_on[key] is None, key
                continue
            assert row_on[key] == pytest.approx(row_off[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(weights_off, weights_on):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_device_side_augmentation_gives_the_host_side_images(records_dir):
    """The reader's draws applied inside a tf.function (the step's place) give the pixels the
    tf.data pipeline gives: the same function on the same draws (equal here on a CPU; a GPU's
    arithmetic may round a pixel differently: at most 1 level, the bound asserted)."""
    from pipeline.augment import DEFAULT_PARAMS, augment_batch
    from pipeline.reader import make_dataset

    host = make_dataset(records_dir, "train", 16, augment=True, shuffle=True, seed=3, epoch=1)
    device = make_dataset(records_dir, "train", 16, augment=True, shuffle=True, seed=3, epoch=1,
                          augment_on_device=True)
    warp = tf.function(lambda images, draws: augment_batch(images, draws, DEFAULT_PARAMS))
    batches = 0
    for (host_images, host_labels), (raw, labels, draws) in zip(host, device):
        on_device = warp(raw, draws).numpy().astype(int)
        assert np.abs(on_device - host_images.numpy().astype(int)).max() <= 1
        assert not np.array_equal(raw.numpy(), host_images.numpy())      # augmentation did something
        np.testing.assert_array_equal(labels.numpy(), host_labels.numpy())
        batches += 1
    assert batches == 8


def test_device_side_augmentation_trains_like_host_side_and_resumes_exactly(slim_t7, records_dir, tmp_path):
    host = train(_config(slim_t7, records_dir, str(tmp_path / "host.keras"), augment=True, epochs=2,
                         checkpoint_every_steps=3))
    device = train(_config(slim_t7, records_dir, str(tmp_path / "device.keras"), augment=True, epochs=2,
                           checkpoint_every_steps=3, augment_on="device"))
    assert device.weights_digest == host.weights_digest

    class Killed(Exception):
        pass

    def kill_at_second_checkpoint_of_epoch_2(event) -> None:
        if isinstance(event, CheckpointSaved) and event.epoch == 2 and event.step >= 2:
            raise Killed

    killed = _config(slim_t7, records_dir, str(tmp_path / "killed.keras"), augment=True, epochs=2,
                     checkpoint_every_steps=3, augment_on="device")
    with pytest.raises(Killed):
        train(killed, progress=kill_at_second_checkpoint_of_epoch_2)
    resumed = train(killed)
    assert resumed.resumed_from is not None and resumed.resumed_from.epoch == 2
    assert resumed.weights_digest == device.weights_digest


def test_a_non_finite_loss_stops_training_at_once_with_nothing_saved(slim_t7, records_dir, tmp_path):
    """A learning rate of 1e20 (finite, so the flag accepts it) overflows the head's weights in the
    first update: the second step's loss is NaN, and training stops there."""
    output = tmp_path / "m.keras"
    done = _cli("train", "-w", slim_t7, "-i", records_dir, "-o", output, "-b1", "16", "--learning-rate", "1e20",
                "--no-augment")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert re.match(r"error: training stopped at epoch 1, step 2 \(global step 2\): the loss is nan \(not finite\); "
                    r"nothing was saved", lines[0]), lines[0]
    assert not output.exists() and not (tmp_path / "m_savedmodel").exists()
    assert tf.train.latest_checkpoint(str(tmp_path / "m.ckpt")) is None


def test_resuming_on_other_records_of_the_same_size_is_refused(slim_t7, adience_root, records_dir, tmp_path):
    from pipeline.preprocess.job import run_preprocess
    from pipeline.synthetic.tree import make_adience_tree

    checkpoints = str(tmp_path / "ckpt")
    train(_config(slim_t7, records_dir, str(tmp_path / "a.keras"), checkpoint_dir=checkpoints))
    # Other faces, the same counts: only the records' digest tells them apart.
    root, summary = adience_root
    other_root = str(tmp_path / "other")
    make_adience_tree(other_root, n_train=summary.count("train"), n_valid=summary.count("valid"), seed=9,
                      bad_files=False, variety=False)
    other = str(tmp_path / "other_records")
    run_preprocess(other_root, other, image_size=224, train_shards=3, valid_shards=2,
                   beam_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    done = _cli("train", "-w", slim_t7, "-i", other, "-o", tmp_path / "b.keras", "-b1", "16", "--no-augment",
                "--checkpoint-dir", checkpoints, "-e", "2")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "holds a checkpoint of a different training (train_records '" in done.stderr
    assert not (tmp_path / "b.keras").exists()


def _cut_at_record(path: str, keep: int) -> None:
    """Keep the first `keep` records of a TFRecord file (cut exactly at a record boundary)."""
    data = open(path, "rb").read()
    end = 0
    for _ in range(keep):
        (length,) = np.frombuffer(data[end:end + 8], "<u8")
        end += 8 + 4 + int(length) + 4
    open(path, "wb").write(data[:end])


@pytest.mark.parametrize("damage", ["cut", "corrupt"])
def test_damaged_training_records_are_one_line_naming_the_shard(damage, slim_t7, records_dir, tmp_path):
    """A shard cut at a record boundary (it would train on fewer images than the manifest says) or
    with a flipped byte: train stops with one line naming the shard and the rerun command."""
    import json

    records = str(tmp_path / "records")
    shutil.copytree(records_dir, records)
    with open(os.path.join(records, "manifest.json")) as f:
        shard = os.path.join(records, json.load(f)["splits"]["train"]["shards"][1])
    if damage == "cut":
        _cut_at_record(shard, 3)
    else:
        data = bytearray(open(shard, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(shard, "wb").write(bytes(data))
    done = _cli("train", "-w", slim_t7, "-i", records, "-o", tmp_path / "m.keras", "-b1", "16", "--no-augment")
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert shard in lines[0] and "--overwrite" in lines[0]
    assert not (tmp_path / "m.keras").exists()
