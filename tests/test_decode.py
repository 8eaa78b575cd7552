"""decode_image / load_image: the one decoding function shared by preprocess and classify."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline import decode
from pipeline.decode import DecodeError, decode_image, load_image
from pipeline.errors import DataError
from pipeline.synthetic.tree import EXIF_ORIENTATION, bad_file_bytes, face_image, pure_red


def encoded(rgb: np.ndarray | Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    im = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    out = io.BytesIO()
    im.save(out, fmt, **kwargs)
    return out.getvalue()


def asymmetric(size: int = 240) -> np.ndarray:
    """Red top-left quadrant, green top-right, blue bottom-left, white bottom-right (RGB)."""
    h = size // 2
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[:h, :h] = (255, 0, 0)
    rgb[:h, h:] = (0, 255, 0)
    rgb[h:, :h] = (0, 0, 255)
    rgb[h:, h:] = (255, 255, 255)
    return rgb


def bgr_reference(rgb: np.ndarray, size: int) -> np.ndarray:
    """Full-resolution Lanczos resize of the same pixels, as BGR: what decode_image approximates."""
    im = Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im)[..., ::-1]


@pytest.mark.parametrize("size", [224, 64, 17])
def test_output_is_contiguous_uint8_square_bgr(size):
    out = decode_image(encoded(face_image(0, 256, seed=1)), size)
    assert out.dtype == np.uint8 and out.shape == (size, size, 3)
    assert out.flags["C_CONTIGUOUS"]


def test_pure_red_comes_out_in_channel_2():
    out = decode_image(encoded(pure_red(64), "PNG"), 32)
    assert (out[..., 2] == 255).all()
    assert (out[..., :2] == 0).all()


def test_jpeg_draft_path_stays_close_to_a_full_resolution_resize():
    rgb = face_image(1, 816, seed=2)
    out = decode_image(encoded(rgb, quality=95), 224)
    diff = np.abs(out.astype(int) - bgr_reference(rgb, 224).astype(int))
    assert diff.mean() < 3.0, diff.mean()


def test_same_bytes_give_the_same_pixels():
    data = encoded(face_image(0, 300, seed=3))
    assert np.array_equal(decode_image(data, 100), decode_image(data, 100))


def test_exif_orientation_is_applied():
    upright = asymmetric()
    # Stored turned a quarter left, tagged "turn a quarter right to display" (orientation 6).
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    data = encoded(np.ascontiguousarray(np.rot90(upright, 1)), quality=95, exif=exif)
    out = decode_image(data, 64).astype(int)
    expected = bgr_reference(upright, 64).astype(int)
    ignoring_tag = bgr_reference(np.ascontiguousarray(np.rot90(upright, 1)), 64).astype(int)
    assert np.abs(out - expected).mean() < 4
    assert np.abs(out - ignoring_tag).mean() > 40


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_become_colour(mode):
    rgb = face_image(1, 128, seed=4)
    out = decode_image(encoded(Image.fromarray(rgb).convert(mode), quality=95), 64)
    assert out.shape == (64, 64, 3)
    if mode == "L":
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    else:
        assert np.abs(out.astype(int) - bgr_reference(rgb, 64).astype(int)).mean() < 6


def test_palette_png_becomes_colour():
    rgb = face_image(0, 128, seed=5)
    out = decode_image(encoded(Image.fromarray(rgb).quantize(colors=64), "PNG"), 64)
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - bgr_reference(rgb, 64).astype(int)).mean() < 10


def test_alpha_is_composited_on_white():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 2] = 255                     # blue...
    rgba[:, :32, 3] = 255                  # ...opaque on the left half, transparent on the right
    out = decode_image(encoded(Image.fromarray(rgba, "RGBA"), "PNG"), 64).astype(int)
    assert (out[:, :28] == (255, 0, 0)).all()          # BGR blue
    assert (out[:, 36:] == 255).all()                  # white, not the black hidden under alpha=0


def test_palette_transparency_and_grey_alpha_are_composited_too():
    p = Image.new("P", (32, 32), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    assert (decode_image(encoded(p, "PNG"), 16) == 255).all()
    la = Image.new("LA", (32, 32), (0, 0))
    assert (decode_image(encoded(la, "PNG"), 16) == 255).all()


def test_16_bit_greyscale_is_scaled_not_clipped():
    grey16 = np.full((32, 32), 32896, np.uint16)      # 128 * 257: mid grey in 16 bits
    out = decode_image(encoded(Image.fromarray(grey16), "PNG"), 16)
    assert np.abs(out.astype(int) - 128).max() <= 1


def test_non_square_is_center_cropped():
    rgb = np.zeros((100, 300, 3), np.uint8)
    rgb[:, :100] = (255, 0, 0)
    rgb[:, 100:200] = (0, 255, 0)
    rgb[:, 200:] = (255, 0, 0)
    out = decode_image(encoded(rgb, "PNG"), 50).astype(int)
    # The outermost columns may take a trace of the cropped-off red through the Lanczos support.
    assert (np.abs(out[:, 1:-1] - (0, 255, 0)) <= 2).all()
    assert (np.abs(out[:, [0, -1]] - (0, 255, 0)) <= 20).all()


def test_small_images_are_upscaled():
    assert decode_image(encoded(face_image(0, 40, seed=6)), 224).shape == (224, 224, 3)


@pytest.mark.parametrize("kind,reason", [
    ("empty", "empty file"),
    ("text", "not an image (cannot identify format)"),
    ("random_bytes", "not an image (cannot identify format)"),
    ("truncated_jpeg", "truncated image"),
    ("broken_jpeg", "corrupt image data"),
])
def test_bad_data_is_a_decode_error_with_its_reason(kind, reason):
    with pytest.raises(DecodeError) as info:
        decode_image(bad_file_bytes(kind, np.random.default_rng(7)))
    assert info.value.reason.startswith(reason)
    assert isinstance(info.value, DataError)


def test_truncated_png_is_rejected_too():
    data = encoded(face_image(1, 128, seed=8), "PNG")
    with pytest.raises(DecodeError, match="truncated image"):
        decode_image(data[: len(data) * 2 // 3])


def test_decompression_bombs_are_rejected(monkeypatch):
    monkeypatch.setattr(decode, "MAX_PIXELS", 100 * 100)
    with pytest.raises(DecodeError, match="too large"):
        decode_image(encoded(face_image(0, 101, seed=9)))
    assert decode_image(encoded(face_image(0, 100, seed=9)), 8).shape == (8, 8, 3)


def test_truncated_images_are_never_loaded_leniently():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_load_image_reads_the_file_and_decodes_it_identically(tmp_path):
    data = encoded(face_image(1, 200, seed=10))
    path = tmp_path / "face.jpg"
    path.write_bytes(data)
    assert np.array_equal(load_image(str(path), 96), decode_image(data, 96))


def test_load_image_names_the_path_in_its_errors(tmp_path):
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(DecodeError, match="missing.jpg: cannot read file"):
        load_image(missing)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError) as info:
        load_image(str(empty))
    assert info.value.reason == "empty file" and info.value.path == str(empty)
