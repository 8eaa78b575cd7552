"""The tf.data reader (pipeline/reader.py) and augmentation (pipeline/augment.py).

Most tests write small record directories themselves (encode_example + TFRecordWriter +
write_manifest), so they know every image; one reads the records the Beam job wrote.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from pipeline.augment import AugmentParams
from pipeline.errors import DataError
from pipeline.manifest import Manifest, SplitInfo, write_manifest
from pipeline.reader import clear_memory_cache, describe_dataset, make_dataset
from pipeline.records import encode_example
from pipeline.schema import LABEL_NAMES, MANIFEST_NAME, shard_name

SIZE = 32


def write_records(directory, splits: dict[str, tuple[int, int]], size: int = SIZE, seed: int = 0,
                  pool: int | None = None) -> dict[str, tuple[np.ndarray, int, int]]:
    """Write split -> (records, shards) of random images; returns path -> (image, label, age).
    pool: draw images from this many random ones (fast for big sets whose content does not matter)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (pool, size, size, 3), dtype=np.uint8) if pool else None
    truth, infos, n = {}, {}, 0
    for split, (count, shards) in splits.items():
        names = [shard_name(split, i, shards) for i in range(shards)]
        writers = [tf.io.TFRecordWriter(os.path.join(str(directory), name)) for name in names]
        by_label = {name: 0 for name in LABEL_NAMES}
        for j in range(count):
            image = images[j % pool] if pool else rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            label, age = int(rng.integers(0, 2)), int(rng.choice([3, 10, 25, 40]))
            path = f"{split}/{age}_{'FM'[label]}/img{n:05d}.jpg"
            writers[j % shards].write(encode_example(image, label, age, path))
            by_label[LABEL_NAMES[label]] += 1
            if not pool:
                truth[path] = (image, label, age)
            n += 1
        for w in writers:
            w.close()
        infos[split] = SplitInfo(names, count, by_label, {})
    write_manifest(str(directory), Manifest(image_size=size, source_root="/generated", splits=infos,
                                            found=n, rejected=0))
    return truth


def collect(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Concatenate a with_meta dataset into images, labels, ages, paths."""
    images, labels, ages, paths = [], [], [], []
    for im, lab, age, path in ds.as_numpy_iterator():
        images.append(im)
        labels.append(lab)
        ages.append(age)
        paths += [p.decode() for p in path]
    return np.concatenate(images), np.concatenate(labels), np.concatenate(ages), paths


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reader_records")
    truth = write_records(directory, {"train": (45, 3), "valid": (11, 2)})
    return str(directory), truth


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    yield
    clear_memory_cache()


def test_modes_return_the_same_images_and_labels(records):
    directory, truth = records
    low = collect(make_dataset(directory, "train", 8, memory="low", with_meta=True))
    high = collect(make_dataset(directory, "train", 8, memory="high", with_meta=True))
    assert low[3] == high[3]
    for a, b in zip(low[:3], high[:3]):
        np.testing.assert_array_equal(a, b)
    images, labels, ages, paths = low
    assert sorted(paths) == sorted(p for p in truth if p.startswith("train/"))
    assert images.dtype == np.uint8 and images.shape == (45, SIZE, SIZE, 3)
    assert labels.dtype == np.float32 and ages.dtype == np.int64
    for image, label, age, path in zip(images, labels, ages, paths):
        np.testing.assert_array_equal(image, truth[path][0])
        assert (label, age) == truth[path][1:]
    # Without meta: (images, labels) only; last batch partial unless drop_remainder.
    batches = list(make_dataset(directory, "train", 8).as_numpy_iterator())
    assert [len(b) for b in batches[0]] == [8, 8] and len(batches[-1][0]) == 45 % 8
    assert all(len(b[0]) == 8 for b in make_dataset(directory, "train", 8, drop_remainder=True).as_numpy_iterator())


def test_high_mode_later_epochs_read_ram_not_disk(tmp_path):
    truth = write_records(tmp_path, {"train": (12, 2)})
    first = collect(make_dataset(str(tmp_path), "train", 5, memory="high", with_meta=True, shuffle=True))
    for name in os.listdir(tmp_path):
        if name.endswith(".tfrecord"):
            os.truncate(tmp_path / name, 0)   # the listed shards still exist but hold nothing now
    second = collect(make_dataset(str(tmp_path), "train", 5, memory="high", with_meta=True, shuffle=True, epoch=1))
    assert sorted(second[3]) == sorted(first[3]) == sorted(truth)
    clear_memory_cache()
    # Read from disk again, the emptied shards no longer hold what the manifest promises: refused.
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain 12 elements"):
        list(make_dataset(str(tmp_path), "train", 5, memory="high").as_numpy_iterator())


def test_several_splits_read_as_one(records):
    directory, truth = records
    _, _, _, paths = collect(make_dataset(directory, ["train", "valid"], 16, with_meta=True))
    assert sorted(paths) == sorted(truth)
    info = describe_dataset(directory, ["train", "valid"])
    assert info["count"] == len(truth) == 56
    assert info["bytes_in_memory"] == 56 * SIZE * SIZE * 3
    assert sum(info["by_label"].values()) == 56 and info["shards"] == 5


@pytest.mark.parametrize("memory", ["low", "high"])
def test_shuffle_is_deterministic_per_seed_and_epoch(records, memory):
    directory, _ = records

    def order(**kw):
        return collect(make_dataset(directory, "train", 7, memory=memory, with_meta=True, shuffle=True, **kw))[3]

    plain = collect(make_dataset(directory, "train", 7, memory=memory, with_meta=True))[3]
    e0 = order(seed=1, epoch=0)
    assert order(seed=1, epoch=0) == e0
    e1 = order(seed=1, epoch=1)
    other_seed = order(seed=2, epoch=0)
    assert sorted(e0) == sorted(e1) == sorted(plain)
    assert e0 != e1 and e0 != plain and e0 != other_seed


@pytest.mark.parametrize("memory", ["low", "high"])
def test_skip_gives_exactly_the_tail_of_the_epoch(records, memory):
    directory, _ = records
    kw = dict(memory=memory, with_meta=True, shuffle=True, augment=True, seed=5, epoch=3)
    full = collect(make_dataset(directory, "train", 8, **kw))
    for skip in (13, 40):
        tail = collect(make_dataset(directory, "train", 8, skip=skip, **kw))
        assert tail[3] == full[3][skip:]
        # Augmentation too is a function of the example's position, not of the batch it lands in.
        np.testing.assert_array_equal(tail[0], full[0][skip:])
        np.testing.assert_array_equal(tail[1], full[1][skip:])


@pytest.mark.parametrize("memory", ["low", "high"])
def test_augmentation_changes_pixels_only_and_is_deterministic(records, memory):
    directory, _ = records
    plain = collect(make_dataset(directory, "train", 8, memory=memory, with_meta=True))
    aug = collect(make_dataset(directory, "train", 8, memory=memory, with_meta=True, augment=True, seed=1))
    again = collect(make_dataset(directory, "train", 8, memory=memory, with_meta=True, augment=True, seed=1))
    other = collect(make_dataset(directory, "train", 8, memory=memory, with_meta=True, augment=True, seed=1,
                                 epoch=1))
    assert aug[0].dtype == np.uint8 and aug[0].shape == plain[0].shape
    assert aug[3] == plain[3]
    np.testing.assert_array_equal(aug[1], plain[1])
    np.testing.assert_array_equal(aug[2], plain[2])
    changed = [not np.array_equal(a, p) for a, p in zip(aug[0], plain[0])]
    assert all(changed)
    np.testing.assert_array_equal(aug[0], again[0])
    assert not np.array_equal(aug[0], other[0])


def test_flip_is_horizontal_never_vertical(tmp_path):
    # One image, asymmetric left/right AND top/bottom, repeated: flip-only settings must give
    # exactly the image or np.fliplr of it, both, and never np.flipud.
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:, : SIZE // 4, 0] = 250          # a left stripe
    image[: SIZE // 5, :, 1] = 200          # a top stripe
    image[SIZE // 2, SIZE // 3, 2] = 99      # one off-centre dot
    image += np.arange(SIZE, dtype=np.uint8)[None, :, None]  # a left-to-right ramp
    with tf.io.TFRecordWriter(str(tmp_path / shard_name("train", 0, 1))) as w:
        for i in range(24):
            w.write(encode_example(image, i % 2, 25, f"x/{i}.jpg"))
    write_manifest(str(tmp_path), Manifest(SIZE, "/g", {"train": SplitInfo([shard_name("train", 0, 1)], 24, {}, {})},
                                           24, 0))
    flip_only = AugmentParams(rotation_degrees=0.0, shift_fraction=0.0, zoom_fraction=0.0,
                              brightness_range=(1.0, 1.0), horizontal_flip=True)
    out = np.concatenate([b[0] for b in make_dataset(str(tmp_path), "train", 8, augment=True,
                                                     augment_params=flip_only).as_numpy_iterator()])
    flipped = [np.array_equal(o, np.fliplr(image)) for o in out]
    same = [np.array_equal(o, image) for o in out]
    assert all(f or s for f, s in zip(flipped, same))
    assert 0 < sum(flipped) < len(out)
    assert not any(np.array_equal(o, np.flipud(image)) for o in out)
    # With the flip off and everything else neutral, augmentation is the identity.
    neutral = AugmentParams(0.0, 0.0, 0.0, (1.0, 1.0), horizontal_flip=False)
    for batch in make_dataset(str(tmp_path), "train", 8, augment=True, augment_params=neutral).as_numpy_iterator():
        assert all(np.array_equal(o, image) for o in batch[0])


_MEMORY_PROBE = """
import json, sys
from pipeline import reader
from pipeline.reader import make_dataset

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

def peak_growth(ds):  # largest RSS increase seen while iterating (sampled at every batch)
    base = peak = rss()
    for _ in ds:
        peak = max(peak, rss())
    return peak - base

small, large = sys.argv[1], sys.argv[2]
# The shuffle buffer (LOW_SHUFFLE_BUFFER records) is the low mode's bound; made smaller than both
# sets here so that what is measured is whether anything grows with the set's size.
reader.LOW_SHUFFLE_BUFFER = 64
peak_growth(make_dataset(small, "train", 32, shuffle=True))   # warm-up: graphs, allocator pools
out = {"low_small": peak_growth(make_dataset(small, "train", 32, shuffle=True)),
       "low_large": peak_growth(make_dataset(large, "train", 32, shuffle=True)),
       "high_large": peak_growth(make_dataset(large, "train", 32, memory="high"))}
print(json.dumps(out))
"""


def test_low_mode_memory_does_not_grow_with_the_number_of_records(tmp_path):
    # Measured in a fresh process (RSS from /proc/self/status), so that memory kept by earlier
    # tests' allocations cannot hide or fake growth.
    import subprocess
    import sys

    size, n = 224, 300
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    write_records(small, {"train": (n, 4)}, size=size, pool=8)
    write_records(large, {"train": (4 * n, 4)}, size=size, pool=8)
    record = size * size * 3
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(small), str(large)], cwd=root,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    growth = json.loads(proc.stdout.strip().splitlines()[-1])
    # 3n more records (about 135 MB) must cost far less than their size.
    assert growth["low_large"] - growth["low_small"] < 3 * n * record / 3, growth
    # Control, proving the measurement sees retained data: the high mode holds the large set in RAM.
    assert growth["high_large"] > 0.6 * 4 * n * record, growth


def test_input_pipelines_see_disjoint_records_covering_everything(records):
    directory, truth = records
    # train: 3 shards over 2 pipelines -> files are sharded; valid: 2 shards over 3 -> records are.
    for split, pipelines in (("train", 2), ("valid", 3)):
        seen = []
        for pid in range(pipelines):
            ctx = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pid,
                                             num_replicas_in_sync=pipelines)
            for memory in ("low", "high"):
                paths = collect(make_dataset(directory, split, 4, memory=memory, with_meta=True, shuffle=True,
                                             input_context=ctx))[3]
                if memory == "low":
                    seen.append(paths)
                else:
                    assert sorted(paths) == sorted(seen[-1])
        assert all(seen)
        assert sum(len(s) for s in seen) == len({p for s in seen for p in s})   # disjoint
        assert sorted(p for s in seen for p in s) == sorted(p for p in truth if p.startswith(split + "/"))


def test_per_replica_batches_under_mirrored_strategy(records):
    directory, _ = records
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    strategy = tf.distribute.MirroredStrategy(devices)
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: make_dataset(directory, "train", 4, input_context=ctx, drop_remainder=True))
    images, labels = next(iter(dist))
    local = strategy.experimental_local_results(images)
    assert len(local) == len(devices)
    assert all(t.shape == (4, SIZE, SIZE, 3) and t.dtype == tf.uint8 for t in local)
    assert all(t.dtype == tf.float32 for t in strategy.experimental_local_results(labels))


def test_cache_file_gives_the_same_data(records, tmp_path):
    directory, _ = records
    plain = collect(make_dataset(directory, "train", 8, with_meta=True))
    cache = str(tmp_path / "train.cache")
    for _ in range(2):  # fills, then reads the cache file
        cached = collect(make_dataset(directory, "train", 8, with_meta=True, cache_file=cache))
        assert cached[3] == plain[3]
        np.testing.assert_array_equal(cached[0], plain[0])
    assert any(name.startswith("train.cache") and name.endswith(".index") for name in os.listdir(tmp_path))
    # Another split never reads this cache; a lock left by a killed run does not block a new one.
    valid = collect(make_dataset(directory, "valid", 8, with_meta=True, cache_file=cache))
    assert all(p.startswith("valid/") for p in valid[3]) and len(valid[3]) == 11
    for name in os.listdir(tmp_path):
        os.remove(tmp_path / name)
    it = iter(make_dataset(directory, "train", 8, cache_file=cache))
    next(it)   # a partly written cache and its lock, as a killed run leaves them
    assert any(name.endswith(".lockfile") for name in os.listdir(tmp_path))
    again = collect(make_dataset(directory, "train", 8, with_meta=True, cache_file=cache))
    assert again[3] == plain[3]


def test_bad_inputs_give_one_clear_error(records, tmp_path):
    directory, _ = records
    with pytest.raises(DataError, match="does not exist.*preprocess"):
        make_dataset(str(tmp_path / "nowhere"), "train", 8)
    raw = tmp_path / "adience"
    (raw / "aligned" / "25_F").mkdir(parents=True)
    with pytest.raises(DataError, match=r"raw Adience folder.*python cli.py preprocess -i"):
        make_dataset(str(raw), "train", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        describe_dataset(str(tmp_path / "empty"), "train")
    with pytest.raises(DataError, match="has no split 'test'; available splits: train, valid"):
        make_dataset(directory, "test", 8)
    with pytest.raises(DataError, match="32x32 images but 224x224 are needed"):
        make_dataset(directory, "train", 8, image_size=224)

    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    body = json.loads((copy / MANIFEST_NAME).read_text())
    (copy / MANIFEST_NAME).write_text(json.dumps({**body, "schema_version": 99}))
    with pytest.raises(DataError, match="schema version 99"):
        make_dataset(str(copy), "train", 8)
    (copy / MANIFEST_NAME).write_text(json.dumps(body))
    os.remove(copy / body["splits"]["valid"]["shards"][1])
    with pytest.raises(DataError, match="valid-00001-of-00002.tfrecord listed in the manifest is missing"):
        make_dataset(str(copy), "valid", 8)
    with pytest.raises(DataError, match="no split given"):
        make_dataset(directory, [], 8)


@pytest.fixture
def beam_records(request):
    pytest.importorskip("pipeline.preprocess.job")
    pytest.importorskip("pipeline.synthetic.tree")
    return request.getfixturevalue("records_dir"), request.getfixturevalue("adience_root")[1]


def test_reads_what_the_beam_job_wrote(beam_records):
    directory, _ = beam_records
    info = describe_dataset(directory, ["train", "valid"], image_size=224)
    images, labels, ages, paths = collect(make_dataset(directory, ["train", "valid"], 32, memory="high",
                                                       with_meta=True, image_size=224))
    assert len(paths) == len(set(paths)) == info["count"] > 0
    assert images.shape[1:] == (224, 224, 3) and images.dtype == np.uint8
    # Each label agrees with the Adience folder name (<age>_<F|M>) in the record's path.
    for label, age, path in zip(labels, ages, paths):
        folder = path.split("/")[-2]
        assert label == {"F": 0.0, "M": 1.0}[folder.split("_")[1]]
        assert age == int(folder.split("_")[0])
    assert sum(1 for lab in labels if lab == 1.0) == info["by_label"]["male"]


def test_warp_matches_tensorflows_projective_transform():
    # The XLA gather warp must give the pixels of TF's own ImageProjectiveTransformV3 (bilinear,
    # nearest fill) times the brightness factor, up to rounding.
    from pipeline.augment import DEFAULT_PARAMS, FILL_MODE, INTERPOLATION, _transforms, augment_batch

    rng = np.random.default_rng(3)
    images = tf.constant(rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8))
    draws = tf.constant(rng.random((6, 6)), tf.float32)
    ours = augment_batch(images, draws).numpy().astype(int)
    low, high = DEFAULT_PARAMS.brightness_range
    factor = low + draws[:, 4] * (high - low)
    reference = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=_transforms(draws, 40, 40, DEFAULT_PARAMS),
        output_shape=[40, 40], fill_value=0.0, interpolation=INTERPOLATION, fill_mode=FILL_MODE)
    reference = np.clip(np.round(reference.numpy() * factor.numpy()[:, None, None, None]), 0, 255)
    assert np.abs(ours - reference).max() <= 1
    assert np.abs(ours - images.numpy()).mean() > 10   # and it did transform them
