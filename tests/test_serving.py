"""The SavedModel for serving (model/network/serving.py), and models that load without this project.

`serve_images` must see the pixels `classify` sees: its in-graph decoding is compared with
`pipeline.decode.decode_image`, and its scores with `classify`, on the same files (generated faces
in every container and colour mode the decoder handles, EXIF-turned ones, grace_hopper.jpg). The
tolerances below are the ones the README states; `pytest -s` prints the measured figures.
"""
from __future__ import annotations

import io
import json
import os
import re
import site
import subprocess
import sys
import textwrap
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from model.errors import ModelError
from model.network.serving import (KERAS_SERVE, LABEL_OUTPUT, PROBABILITY_OUTPUT, SERVE_IMAGES, SERVE_IMAGES_FLIP,
                                   SERVING_DEFAULT, decode_batch, decode_for_model, exif_orientation,
                                   export_savedmodel)
from pipeline.decode import decode_image
from pipeline.schema import DEFAULT_IMAGE_SIZE, LABEL_NAMES
from pipeline.synthetic.tree import EXIF_ORIENTATION, face_image
from tests.conftest import ROOT
from tests.test_decode import encoded
from tests.test_faces import grace_path

# In-graph decoding against decode_image: the largest difference of one pixel value (8-bit files;
# 16-bit PNGs are reduced to 8 bits differently), and the share of values that differ at all.
PIXEL_LEVELS = 1
PIXEL_LEVELS_16BIT = 2
DIFFERING_SHARE = 1e-3
# The model's logit (the sigmoid's input) on the in-graph pixels against decode_image's, and so
# serve_images' probability against classify's at any score (the sigmoid's slope is at most 1/4).
LOGIT_TOLERANCE = 1e-3
SCORE_TOLERANCE = LOGIT_TOLERANCE / 4


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[EXIF_ORIENTATION] = orientation
    return tags


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _with_alpha(rgb: np.ndarray) -> Image.Image:
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[: len(rgb) // 4, :, 3] = 0            # a transparent band, and a half-transparent one
    rgba[len(rgb) // 4: len(rgb) // 2, :, 3] = 128
    return Image.fromarray(rgba, "RGBA")


def _sample_files() -> dict[str, bytes]:
    """Encoded files of every kind serve_images takes (sizes that take each draft ratio)."""
    face = face_image(1, 400, seed=11)
    turned = np.ascontiguousarray(np.rot90(face_image(0, 600, seed=12)[:, 80:520], 1))
    palette = Image.fromarray(face).quantize(colors=64)
    return {
        "adience_size_816.jpg": encoded(face_image(0, 816, seed=10), "JPEG", quality=90),
        "ratio4_1000.jpg": encoded(face_image(0, 1000, seed=16), "JPEG", quality=90),
        "ratio8_1800.jpg": encoded(face_image(1, 1800, seed=13), "JPEG", quality=85),
        "portrait_exif6.jpg": encoded(turned, "JPEG", quality=90, exif=exif(6)),
        "landscape.png": encoded(face_image(0, 500, seed=14)[60:440], "PNG"),
        "small_upscaled.png": encoded(face_image(1, 150, seed=15), "PNG"),
        "exif8.webp": encoded(np.ascontiguousarray(np.rot90(face, 3)), "WEBP", quality=90, exif=exif(8).tobytes()),
        "grey.jpg": encoded(Image.fromarray(face).convert("L"), "JPEG", quality=90),
        "grey_alpha.png": encoded(_with_alpha(face).convert("LA"), "PNG"),
        "rgba.png": encoded(_with_alpha(face), "PNG"),
        "palette_transparent.png": encoded(palette, "PNG", transparency=0),
        "palette.gif": encoded(palette, "GIF"),
        "plain.bmp": encoded(face, "BMP"),
        "grace_hopper.jpg": _read(grace_path()),
    }


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("serving_files")
    paths = {}
    for name, data in _sample_files().items():
        paths[name] = str(folder / name)
        with open(paths[name], "wb") as f:
            f.write(data)
    return paths


@pytest.fixture(scope="module")
def savedmodel(model, tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("serving") / "model_savedmodel")
    export_savedmodel(model, directory)
    return directory


def _pixel_differences(data: bytes) -> np.ndarray:
    ours = decode_for_model(tf.constant(data), DEFAULT_IMAGE_SIZE).numpy().astype(int)
    return np.abs(ours - decode_image(data, DEFAULT_IMAGE_SIZE).astype(int))


# ------------------------------------------------------------------ decoding in-graph
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_exif_orientation_is_read_and_applied_as_pillow_does(fmt):
    picture = face_image(0, 300, seed=3)[:, 20:270]       # not square, not symmetric
    for orientation in range(1, 9):
        tags = exif(orientation) if fmt == "JPEG" else exif(orientation).tobytes()
        data = encoded(picture, fmt, exif=tags, quality=95)
        assert int(exif_orientation(tf.constant(data))) == orientation == Image.open(io.BytesIO(data)).getexif()[
            EXIF_ORIENTATION]
        assert _pixel_differences(data).max() <= PIXEL_LEVELS, (fmt, orientation)
    # The test can fail: ignoring the tag (orientation 6 read as 1) gives other pixels.
    data = encoded(picture, fmt, exif=exif(6) if fmt == "JPEG" else exif(6).tobytes(), quality=95)
    unturned = decode_image(encoded(picture, fmt, quality=95)).astype(int)
    assert np.abs(decode_for_model(tf.constant(data), DEFAULT_IMAGE_SIZE).numpy() - unturned).mean() > 10


def _big_endian_exif(orientation: int) -> bytes:
    """An "MM" (Motorola) EXIF block, orientation as the second IFD0 entry (Pillow writes "II")."""
    entries = [(0x010F, 2, 4, b"abc\x00"), (EXIF_ORIENTATION, 3, 1, orientation.to_bytes(2, "big") + b"\x00\x00")]
    ifd = len(entries).to_bytes(2, "big") + b"".join(
        tag.to_bytes(2, "big") + kind.to_bytes(2, "big") + count.to_bytes(4, "big") + value
        for tag, kind, count, value in entries) + b"\x00" * 4
    return b"Exif\x00\x00" + b"MM\x00*" + (8).to_bytes(4, "big") + ifd


def test_orientation_in_big_endian_exif_after_other_segments_and_fill_bytes():
    picture = face_image(1, 240, seed=4)[:, :200]
    data = encoded(picture, "JPEG", quality=95, exif=_big_endian_exif(8))
    # A comment segment, an APP2 segment and fill bytes before the EXIF APP1 segment.
    data = data[:2] + b"\xff\xfe\x00\x07hello" + b"\xff\xe2\x00\x04ab" + b"\xff\xff" + data[2:]
    assert Image.open(io.BytesIO(data)).getexif()[EXIF_ORIENTATION] == 8
    assert int(exif_orientation(tf.constant(data))) == 8
    assert _pixel_differences(data).max() <= PIXEL_LEVELS


@pytest.mark.parametrize("data", [
    b"",
    b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\xff\x7f",       # IFD0 far past the end
    b"\xff\xd8\xff\xe1\xff\xffExif\x00\x00MM",                             # segment longer than the file
    b"\x89PNG\r\n\x1a\n\xff\xff\xff\xffeXIf",                              # chunk longer than the file
    b"RIFF\x00\x00\x00\x00WEBPEXIF\x10\x00\x00\x00II*\x00",               # truncated EXIF chunk
    b"not an image at all",
])
def test_broken_or_missing_exif_reads_as_upright(data):
    assert int(exif_orientation(tf.constant(data))) == 1


def test_in_graph_decoding_matches_decode_image(sample_files):
    worst = {}
    for name, path in sample_files.items():
        diff = _pixel_differences(_read(path))
        worst[name] = (int(diff.max()), float((diff > 0).mean()))
        assert diff.max() <= PIXEL_LEVELS and (diff > 0).mean() <= DIFFERING_SHARE, (name, worst[name])
    grey16 = (face_image(0, 300, seed=5)[..., 1].astype(np.uint16) * 257 + 77)
    diff = _pixel_differences(encoded(Image.fromarray(grey16), "PNG"))
    worst["grey16.png"] = (int(diff.max()), float((diff > 0).mean()))
    assert diff.max() <= PIXEL_LEVELS_16BIT
    print("\nin-graph decoding vs decode_image (max |difference|, share of values differing):")
    for name, (levels, share) in worst.items():
        print(f"  {name:26s} {levels}  {share:.5f}")


def _declaring(data: bytes, width: int, height: int) -> bytes:
    """The file with its header's dimensions changed (JPEG: the SOF0 segment; PNG: IHDR)."""
    if data.startswith(b"\x89PNG"):
        ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[24:29]
        return data[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + data[33:]
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9:]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decompression_bombs_are_refused_before_decoding(fmt):
    data = encoded(face_image(0, 64, seed=6), fmt)
    assert Image.open(io.BytesIO(_declaring(data, 300, 200))).size == (300, 200)      # the header edit is right
    with pytest.raises(tf.errors.InvalidArgumentError, match="decompression bomb guard"):
        decode_for_model(tf.constant(_declaring(data, 20_000, 20_000)), DEFAULT_IMAGE_SIZE)


# ------------------------------------------------------------------ the SavedModel
def test_signatures_inputs_and_named_outputs(savedmodel):
    served = tf.saved_model.load(savedmodel)
    assert set(served.signatures) == {SERVING_DEFAULT, SERVE_IMAGES, SERVE_IMAGES_FLIP, KERAS_SERVE}
    inputs = {name: served.signatures[name].structured_input_signature[1] for name in served.signatures}
    assert {k: (v.dtype, v.shape.as_list()) for k, v in inputs[SERVING_DEFAULT].items()} == {
        "image": (tf.uint8, [None, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3])}
    for name in (SERVE_IMAGES, SERVE_IMAGES_FLIP):
        assert {k: (v.dtype, v.shape.as_list()) for k, v in inputs[name].items()} == {
            "images": (tf.string, [None])}
    for name in (SERVING_DEFAULT, SERVE_IMAGES, SERVE_IMAGES_FLIP):
        outputs = served.signatures[name].structured_outputs
        assert {k: (v.dtype, v.shape.as_list()) for k, v in outputs.items()} == {
            PROBABILITY_OUTPUT: (tf.float32, [None]), LABEL_OUTPUT: (tf.string, [None])}


def test_serving_default_gives_the_keras_models_scores_and_labels(savedmodel, model, sample_files):
    pixels = np.stack([decode_image(_read(path)) for path in sample_files.values()])
    expected = model.predict(pixels, verbose=0)[:, 0]
    out = tf.saved_model.load(savedmodel).signatures[SERVING_DEFAULT](image=tf.constant(pixels))
    np.testing.assert_allclose(out[PROBABILITY_OUTPUT].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert [s.decode() for s in out[LABEL_OUTPUT].numpy()] == [LABEL_NAMES[int(p > 0.5)] for p in expected]
    # The fixture's model tells the generated classes apart (so the labels above are not all one).
    assert len(set(out[LABEL_OUTPUT].numpy().tolist())) == 2


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def test_serve_images_matches_classify_on_the_same_files(savedmodel, model, sample_files):
    from model.network.head import OUTPUT_LAYER
    from model.inference.classify import classify_files

    paths = list(sample_files.values())
    rows = classify_files(model, paths, faces="aligned")
    assert [row.path for row in rows] == paths and all(row.score is not None for row in rows)
    expected = np.array([row.score for row in rows])
    served = tf.saved_model.load(savedmodel).signatures[SERVE_IMAGES]
    out = served(images=tf.constant([_read(path) for path in paths]))
    scores = out[PROBABILITY_OUTPUT].numpy()
    # The fixture's scores are mostly near 0 or 1, where the sigmoid hides differences: the logits
    # (what the output layer's sigmoid takes) on the same pixels show them at full size.
    output = model.get_layer(OUTPUT_LAYER)
    features = keras.Model(model.input, output.input)
    kernel, bias = output.get_weights()

    def logits(pixels):
        return (features.predict(np.stack(pixels), verbose=0) @ kernel + bias)[:, 0]

    ours = logits([decode_for_model(tf.constant(_read(path)), DEFAULT_IMAGE_SIZE).numpy() for path in paths])
    theirs = logits([decode_image(_read(path)) for path in paths])
    print(f"\nserve_images vs classify on {len(paths)} files: max |Δ probability| "
          f"{np.abs(scores - expected).max():.2e}; logits {np.abs(theirs).min():.1f} … {np.abs(theirs).max():.1f} "
          f"in size, max |Δ logit| {np.abs(ours - theirs).max():.2e}")
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=LOGIT_TOLERANCE)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=SCORE_TOLERANCE)
    assert [s.decode() for s in out[LABEL_OUTPUT].numpy()] == [row.label for row in rows]
    empty = served(images=tf.constant([], tf.string))
    assert empty[PROBABILITY_OUTPUT].shape == (0,) and empty[LABEL_OUTPUT].shape == (0,)


def test_serve_images_flip_is_the_mean_of_two_separate_calls(savedmodel, sample_files):
    served = tf.saved_model.load(savedmodel).signatures
    files = tf.constant([_read(path) for path in sample_files.values()])
    out = served[SERVE_IMAGES_FLIP](images=files)
    # The two separate calls, on the pixels the signature decodes (the same in-graph decoding).
    pixels = decode_batch(files, DEFAULT_IMAGE_SIZE).numpy()
    plain = served[SERVING_DEFAULT](image=tf.constant(pixels))[PROBABILITY_OUTPUT].numpy()
    mirror = served[SERVING_DEFAULT](image=tf.constant(pixels[:, :, ::-1]))[PROBABILITY_OUTPUT].numpy()
    mean = (plain + mirror) / 2
    np.testing.assert_allclose(out[PROBABILITY_OUTPUT].numpy(), mean, rtol=0, atol=1e-6)
    assert [s.decode() for s in out[LABEL_OUTPUT].numpy()] == [LABEL_NAMES[int(p > 0.5)] for p in mean]
    assert np.max(np.abs(plain - mean)) > 1e-4          # not vacuous: the mirror images score differently
    empty = served[SERVE_IMAGES_FLIP](images=tf.constant([], tf.string))
    assert empty[PROBABILITY_OUTPUT].shape == (0,) and empty[LABEL_OUTPUT].shape == (0,)


def test_a_file_that_does_not_decode_fails_the_request(savedmodel, sample_files):
    served = tf.saved_model.load(savedmodel).signatures[SERVE_IMAGES]
    good = _read(sample_files["plain.bmp"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        served(images=tf.constant([good, b"This is not an image."]))


def test_export_replaces_the_directory_whole_and_refuses_a_non_classifier(model, tmp_path):
    target = tmp_path / "out_savedmodel"
    target.mkdir()
    (target / "stale.txt").write_text("from an earlier export")
    export_savedmodel(model, str(target))
    assert (target / "saved_model.pb").is_file() and not (target / "stale.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["out_savedmodel"]          # no .partial / .previous left
    backbone = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, name="scores")])
    with pytest.raises(ModelError, match="not a gender classifier"):
        export_savedmodel(backbone, str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------------------ without this project
def run_without_project(script: str, cwd: str, *args: str) -> subprocess.CompletedProcess:
    """Run `script` in a Python that has the venv's packages but cannot import this project.

    `-I` drops the script's folder, the current folder, PYTHONPATH and user site-packages from
    sys.path; `-S` skips `site`, so no .pth file runs, including the editable install's finder
    (`__editable__.gender_classifier-*.pth`, which maps `model`/`pipeline` to the checkout). Only
    the site-packages folders themselves are then added back; the script first proves that
    neither `model` nor `pipeline` can be found.
    """
    prelude = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.extend({site.getsitepackages()!r})
        for name in ("model", "pipeline", "cli"):
            assert importlib.util.find_spec(name) is None, f"{{name}} importable: {{sys.path}}"
    """)
    return subprocess.run([sys.executable, "-I", "-S", "-c", prelude + textwrap.dedent(script), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_keras_files_load_with_plain_keras_and_give_the_same_scores(classifier_path, slim_t7, sample_files,
                                                                    tmp_path):
    from model.network.backbone import convert_t7_to_keras, load_backbone
    from model.network.head import load_classifier

    vggface = str(tmp_path / "vggface.keras")
    convert_t7_to_keras(slim_t7, vggface)
    pixels = np.stack([decode_image(_read(path)) for path in sample_files.values()])
    np.save(tmp_path / "pixels.npy", pixels)
    script = """
        import json, sys
        import keras, numpy as np
        pixels = np.load("pixels.npy")
        for path, out in json.loads(sys.argv[1]).items():
            model = keras.models.load_model(path, safe_mode=True)
            np.save(out, model.predict(pixels, verbose=0))
        print("loaded", keras.__version__)
    """
    outputs = {classifier_path: str(tmp_path / "classifier.npy"), vggface: str(tmp_path / "vggface.npy")}
    done = run_without_project(script, str(tmp_path), json.dumps(outputs))
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-3000:]
    # The same files inside the project: its loaders (the backbone rebuilt from the file's weights).
    inside = {classifier_path: load_classifier(classifier_path), vggface: load_backbone(vggface)}
    for path, model in inside.items():
        np.testing.assert_allclose(np.load(outputs[path]), model.predict(pixels, verbose=0), rtol=1e-5, atol=1e-7)


def _readme_serving_snippet() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Serving\n", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(snippets) == 1, "the README's Serving section shows one Python snippet"
    return snippets[0]


def test_readme_python_snippet_runs_without_the_project(savedmodel, model, tmp_path):
    from model.inference.classify import classify_files

    snippet = _readme_serving_snippet()
    names = re.findall(r'"(face\d\.\w+)"', snippet)
    assert names and f'"{os.path.basename(savedmodel)}"' in snippet
    os.symlink(savedmodel, tmp_path / os.path.basename(savedmodel))
    for label, name in enumerate(names):
        fmt = {"jpg": "JPEG", "png": "PNG"}[name.rsplit(".", 1)[1]]
        (tmp_path / name).write_bytes(encoded(face_image(label % 2, 300, seed=20 + label), fmt))
    done = run_without_project(snippet, str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = classify_files(model, [str(tmp_path / name) for name in names], faces="aligned")
    printed = [re.fullmatch(r"(\S+): (\w+) \(male probability ([0-9.]+)\)", line) for line in done.stdout.splitlines()]
    assert all(printed) and [m[1] for m in printed] == names, done.stdout
    assert [m[2] for m in printed] == [row.label for row in rows]
    # Printed to 4 decimals: equal to classify's score within the tolerance plus the rounding.
    np.testing.assert_allclose([float(m[3]) for m in printed], [row.score for row in rows], atol=SCORE_TOLERANCE + 5e-5)
