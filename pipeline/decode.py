"""The one image decoding function: preprocessing, classification and the benchmarks all call it,
so training and serving see exactly the same pixels.

Pillow does the work (JPEG, PNG, GIF, BMP, TIFF, WebP, ... whatever the installed Pillow reads).
"""
from __future__ import annotations

import errno
import io
import os
import stat
from typing import BinaryIO, Callable, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pipeline.errors import DataError
from pipeline.schema import DEFAULT_IMAGE_SIZE

# A truncated file is a reject, never a silently half-grey face: keep Pillow strict (its default).
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Decompression-bomb guard: Pillow only warns between its limit and twice its limit; we reject
# everything above its limit (about 89 Mpixels; Adience faces are 816×816 = 0.67 Mpixels).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

# The most bytes read from one image file. Adience's faces are 816x816 JPEGs of 100-300 KB and a
# 50-megapixel camera JPEG is about 25 MB; 64 MiB is well above any face photo, and it bounds the
# memory a reader holds per file (a Beam worker one file at a time, `classify` one per decoding
# thread) whatever a path points to: a huge file, or a link to an endless stream.
MAX_IMAGE_BYTES = 64 * 2**20

# Transparent areas are composited on white (what a viewer shows on a page) rather than dropped
# with convert("RGB"), which exposes whatever colour the encoder left under alpha = 0.
_BACKGROUND = (255, 255, 255)

# 16/32-bit integer greyscale (16-bit PNG, TIFF) is scaled to 8 bits; convert("L") would clip it.
_WIDE_INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")

T = TypeVar("T")


class DecodeError(DataError):
    """An input file that cannot be turned into an image; `reason` is the short cause."""

    def __init__(self, reason: str, path: str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


def _decode_error(err: Exception) -> DecodeError:
    """Pillow's exception -> our reason: truncation told apart from other corruption."""
    message = str(err)
    if "truncated" in message.lower():
        return DecodeError("truncated image")
    if isinstance(err, OSError):
        return DecodeError(f"corrupt image data: {message}")
    return DecodeError(f"corrupt image data: {type(err).__name__}: {message}")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (greyscale replicated, CMYK/YCbCr converted, alpha on white)."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        # A palette image may carry transparency; expand it so the alpha path below applies.
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in _WIDE_INT_MODES:
        wide = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(wide / 257.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im) + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, CMYK (plain conversion; ICC profiles are ignored), YCbCr, LAB, HSV, RGBX.
    return im.convert("RGB")


def _open(data: bytes) -> Image.Image:
    """Encoded bytes -> a lazily opened Pillow image whose header passed the checks (not loaded yet)."""
    if not data:
        raise DecodeError("empty file")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not an image (cannot identify format)") from None
    except Image.DecompressionBombError as err:
        raise DecodeError(f"image too large (decompression bomb guard): {err}") from None
    except Exception as err:  # noqa: BLE001 - a header Pillow chokes on is a bad file, not a crash
        raise _decode_error(err) from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise DecodeError(f"image too large ({width}x{height} pixels; decompression bomb guard)")
    if width == 0 or height == 0:
        im.close()
        raise DecodeError(f"corrupt image data: {width}x{height} pixels")
    return im


def _load_rgb(im: Image.Image, draft: int | None = None) -> Image.Image:
    """Load an opened image upright (EXIF orientation applied) in 8-bit RGB; JPEGs first reduced in
    the DCT domain when `draft` is given: by 1/2, 1/4 or 1/8, never below `draft` on the shorter side."""
    try:
        if draft:
            # A no-op for formats other than JPEG.
            im.draft("RGB", (draft, draft))
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        return _to_rgb(im)
    except Exception as err:  # noqa: BLE001 - Pillow raises assorted types on malformed files
        raise _decode_error(err) from None


def to_model_input(im: Image.Image, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """An RGB Pillow image -> uint8 size×size×3 BGR: its largest centred square, Lanczos-resized.

    The last step of `decode_image`, also applied to the face crops `classify` aligns on photos,
    so that a detected face reaches the model exactly as a training face does.
    """
    try:
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        # Lanczos rather than bicubic + reducing_gap: after draft the remaining reduction is
        # < 2x for JPEGs, where reducing_gap does nothing, and Lanczos costs little more
        # (408->224: 3.2 ms vs 2.8 ms for bicubic, measured; ~5% of the whole decode) for a
        # sharper antialiased result.
        im = im.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
        rgb = np.asarray(im, dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - Pillow raises assorted types on malformed files
        raise _decode_error(err) from None
    if rgb.shape != (size, size, 3):
        raise DecodeError(f"corrupt image data: decoded to shape {rgb.shape}")
    # Pillow gives RGB; VGG-Face (Caffe) wants BGR.
    return np.ascontiguousarray(rgb[..., ::-1])


def decode_image(data: bytes, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Encoded image bytes -> uint8 array size×size×3 in BGR order; DecodeError(reason) if unusable.

    Steps: EXIF orientation applied; any colour mode turned into 3-channel colour (alpha composited
    on white); JPEGs are first reduced in the DCT domain by `Image.draft` (by 1/2, 1/4 or 1/8, never
    below `size`), then the image is resized with an antialiasing Lanczos filter. A non-square
    image is center-cropped to its largest centered square before the resize (faces keep their
    proportions; the aligned Adience faces are square, so for them this is a plain resize).
    """
    with _open(data) as im:
        return to_model_input(_load_rgb(im, draft=size), size)


def decode_photo(data: bytes) -> Image.Image:
    """Encoded image bytes -> the whole picture, upright, 8-bit RGB, full resolution (for finding
    faces in it); the same checks and colour handling as decode_image, DecodeError(reason) if unusable."""
    im = _open(data)
    rgb = _load_rgb(im)
    if rgb is im:
        return im          # loaded: the in-memory file needs no closing
    im.close()
    return rgb


class UnreadableFile(OSError):
    """A path that is not a regular file, or larger than the cap; `strerror` says which."""


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def file_kind(mode: int) -> str:
    """What a non-regular st_mode is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str, st: os.stat_result, max_bytes: int) -> None:
    """UnreadableFile unless st is a regular file of at most max_bytes."""
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableFile(errno.EINVAL, f"not a regular file ({file_kind(st.st_mode)})", path)
    if st.st_size > max_bytes:
        raise UnreadableFile(errno.EFBIG, f"file of {st.st_size:,} bytes, over the {max_bytes // 2**20} MiB "
                                          f"cap per image", path)


def _read_local(path: str, max_bytes: int) -> bytes:
    # stat first: never open a device or FIFO at all (opening one may block or have effects); then
    # open without blocking and check the opened file again, in case the path changed in between.
    check_regular(path, os.stat(path), max_bytes)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        check_regular(path, os.fstat(f.fileno()), max_bytes)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableFile(errno.EFBIG, f"file over the {max_bytes // 2**20} MiB cap per image", path)
    return data


def _open_with_gfile(path: str) -> BinaryIO:
    from pipeline.files import open_read

    return open_read(path)


def read_bytes(path: str, max_bytes: int = MAX_IMAGE_BYTES,
               opener: Callable[[str], BinaryIO] | None = None) -> bytes:
    """The raw bytes of a file, at most max_bytes (OSError, UnreadableFile for the refusals).

    Local paths: regular files only (a FIFO, device or socket, also behind a symbolic link, is
    refused without blocking). Remote paths (gs://, ...) go through `opener` (default tf.io.gfile;
    the Beam job passes Beam's FileSystems, so its workers do not import TensorFlow).
    """
    if "://" not in path:
        return _read_local(path, max_bytes)
    with (opener or _open_with_gfile)(path) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableFile(errno.EFBIG, f"file over the {max_bytes // 2**20} MiB cap per image", path)
    return data


def read_error_reason(err: Exception) -> str:
    """The reject reason of a file that could not be read."""
    if isinstance(err, UnreadableFile):
        return err.strerror
    cause = (err.strerror if isinstance(err, OSError) and err.strerror
             else getattr(err, "exception_details", None) or err)
    return f"cannot read file ({cause})"


def load_decoded(path: str, decode: Callable[[bytes], T]) -> T:
    """Read a file (local, or remote through tf.io.gfile) and decode its bytes; DecodeError names the path."""
    try:
        data = read_bytes(path)
    except Exception as err:  # noqa: BLE001 - missing/unreadable file: one clear line
        raise DecodeError(read_error_reason(err), path) from None
    try:
        return decode(data)
    except DecodeError as err:
        raise DecodeError(err.reason, path) from None


def load_image(path: str, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Read a file (local, or remote through tf.io.gfile) and decode it with decode_image; DecodeError names the path."""
    return load_decoded(path, lambda data: decode_image(data, size))


def load_photo(path: str) -> Image.Image:
    """Read a file (local, or remote through tf.io.gfile) and decode it with decode_photo; DecodeError names the path."""
    return load_decoded(path, decode_photo)
