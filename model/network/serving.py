"""The TF Serving export of a trained classifier: a SavedModel with named outputs, and a signature
that takes encoded image files, decoded in-graph the way `pipeline.decode.decode_image` decodes.

Signatures (all outputs per image):
- `serving_default`: `image`, uint8 [-1, S, S, 3] BGR pixels (what `decode_image` returns) ->
  `male_probability` (float32 [-1]: the sigmoid, probability of male) and `label` (string [-1]:
  "female" or "male", male when the probability is above the export's threshold: `DECISION_THRESHOLD`
  unless one is given, e.g. the one `evaluate` stored in the model file; as `classify` and
  `evaluate` decide).
- `serve_images`: `images`, string [-1]: the bytes of JPEG, PNG, WebP, GIF or BMP files -> the same
  two outputs. Each file is decoded as `decode_image` does it, in TensorFlow ops (a server runs no
  Pillow): EXIF orientation, JPEG reduced in the DCT domain like Pillow's `draft`, 3-channel colour
  (alpha composited on white), the largest centred square resized with an antialiased Lanczos-3
  filter, BGR. A file that does not decode fails the whole request (TensorFlow's error names it).
- `serve_images_flip`: the same input and outputs as `serve_images`, with flip test-time
  augmentation (model/tta.py, as `classify --tta flip`): each decoded face and its mirror image go
  through the model in one call, and `male_probability` is the mean of their two probabilities
  (`label` decides on that mean).
- `serve`: Keras' own endpoint, kept for callers of `model.export`'s SavedModel: uint8 BGR ->
  the model's raw [-1, 1] output.

Why the pixels agree with Pillow's almost exactly (measured in tests/test_serving.py): TensorFlow
and Pillow both decode JPEG with libjpeg-turbo, identical with `INTEGER_ACCURATE` and the same
DCT scaling; the resize is `ScaleAndTranslate`'s Lanczos-3, the filter Pillow uses, applied like
Pillow's (horizontal pass rounded to 8 bits, then vertical; the square's edge taps read the pixels
beside it, as Pillow's `box` does). What is left is float against fixed-point rounding.
"""
from __future__ import annotations


import keras
import tensorflow as tf

from model.contract import DECISION_THRESHOLD, checked_threshold, image_size_of, male_probability, predicted_male
from model.errors import ModelError
from model.network.head import OUTPUT_LAYER, is_classifier
from model.tta import TTA_FLIP, averaged
from pipeline.decode import MAX_PIXELS
from pipeline.files import replacing
from pipeline.schema import LABEL_NAMES

SERVING_DEFAULT = "serving_default"
SERVE_IMAGES = "serve_images"
SERVE_IMAGES_FLIP = "serve_images_flip"
KERAS_SERVE = "serve"
PROBABILITY_OUTPUT = "male_probability"
LABEL_OUTPUT = "label"
# The EXIF (TIFF) tag of the orientation, and where the EXIF block sits in each container.
_ORIENTATION_TAG = 0x0112
_EXIF_HEADER = b"Exif\x00\x00"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A bound on IFD0's entries read (real files have a few dozen): keeps a corrupt count cheap.
_MAX_IFD_ENTRIES = 512
# White, what alpha is composited on (as pipeline.decode does).
_BACKGROUND = 255.0


# ------------------------------------------------------------------ reading bytes in-graph
def _bytes(b: tf.Tensor, offset: tf.Tensor, width: int) -> tf.Tensor:
    """The `width` bytes at `offset` (any shape) of the uint8 vector b, as int64; -1 past either end."""
    n = tf.size(b, out_type=tf.int64)
    index = tf.expand_dims(tf.cast(offset, tf.int64), -1) + tf.range(width, dtype=tf.int64)
    inside = (index >= 0) & (index < n)
    return tf.where(inside, tf.cast(tf.gather(b, tf.clip_by_value(index, 0, tf.maximum(n - 1, 0))), tf.int64), -1)


def _uint(b: tf.Tensor, offset: tf.Tensor, width: int, little) -> tf.Tensor:
    """The unsigned integer of `width` bytes at `offset`, little-endian where `little` is true;
    bytes past either end read as 0."""
    k = tf.range(width, dtype=tf.int64)
    shifts = tf.where(tf.cast(little, tf.bool), 8 * k, 8 * (width - 1 - k))
    return tf.reduce_sum(tf.bitwise.left_shift(tf.maximum(_bytes(b, offset, width), 0), shifts), -1)


def _is(b: tf.Tensor, offset: tf.Tensor, signature: bytes) -> tf.Tensor:
    """True where the bytes at `offset` are `signature`."""
    return tf.reduce_all(tf.equal(_bytes(b, offset, len(signature)), list(signature)), -1)


def _walk(b: tf.Tensor, start: int, step) -> tf.Tensor:
    """Walk a container's blocks from `start`; step(p) -> (is_exif, exif_offset, next_p, stop).
    The offset of the first EXIF block found, -1 if none (every step moves forward, so it ends)."""
    n = tf.size(b, out_type=tf.int64)

    def body(p, found):
        hit, data, nxt, stop = step(p)
        return tf.where(stop | (nxt <= p), n, nxt), tf.where(hit, data, found)

    _, found = tf.while_loop(lambda p, found: (found < 0) & (p < n), body,
                             (tf.constant(start, tf.int64), tf.constant(-1, tf.int64)))
    return found


def _jpeg_step(b, p):
    """JPEG: marker segments until the scan; EXIF is an APP1 segment starting "Exif\\0\\0"."""
    marker = _uint(b, p + 1, 1, False)
    fill = tf.equal(marker, 0xFF)                                    # padding before a marker
    standalone = tf.equal(marker, 0x01) | ((marker >= 0xD0) & (marker <= 0xD7))
    hit = tf.equal(marker, 0xE1) & _is(b, p + 4, _EXIF_HEADER)
    stop = ~_is(b, p, b"\xff") | tf.equal(marker, 0xDA) | tf.equal(marker, 0xD9)
    nxt = tf.where(fill, p + 1, tf.where(standalone, p + 2, p + 2 + _uint(b, p + 2, 2, False)))
    return hit, p + 4 + len(_EXIF_HEADER), nxt, stop


def _png_step(b, p):
    """PNG: chunks (length, type, data, CRC) until IEND; EXIF is the eXIf chunk."""
    return (_is(b, p + 4, b"eXIf"), p + 8, p + 12 + _uint(b, p, 4, False), _is(b, p + 4, b"IEND"))


def _webp_step(b, p):
    """WebP (RIFF): chunks (FourCC, little-endian size, data padded to even); EXIF is "EXIF"."""
    size = _uint(b, p + 4, 4, True)
    return _is(b, p, b"EXIF"), p + 8, p + 8 + size + size % 2, tf.constant(False)


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8, int64) of one encoded JPEG, PNG or WebP file; 1 if it has none.

    TensorFlow's decoders ignore EXIF, and no TensorFlow op reads it, so IFD0 is read here from
    the bytes: found in the container as Pillow finds it (JPEG APP1, PNG eXIf, WebP EXIF chunk).
    """
    b = tf.io.decode_raw(data, tf.uint8)
    # (Two bytes at least: the reads below gather from b.)
    return tf.cond(tf.size(b) >= 2, lambda: _orientation_of(b), lambda: tf.constant(1, tf.int64))


def _orientation_of(b: tf.Tensor) -> tf.Tensor:
    none = lambda: tf.constant(-1, tf.int64)  # noqa: E731
    start = tf.cond(_is(b, 0, b"\xff\xd8"), lambda: _walk(b, 2, lambda p: _jpeg_step(b, p)), lambda: tf.cond(
        _is(b, 0, _PNG_SIGNATURE), lambda: _walk(b, 8, lambda p: _png_step(b, p)), lambda: tf.cond(
            _is(b, 0, b"RIFF") & _is(b, 8, b"WEBP"), lambda: _walk(b, 12, lambda p: _webp_step(b, p)), none)))
    # Some PNG/WebP writers keep JPEG's "Exif\0\0" before the TIFF header too.
    tiff = tf.where(_is(b, start, _EXIF_HEADER), start + len(_EXIF_HEADER), start)
    little, big = _is(b, tiff, b"II*\x00"), _is(b, tiff, b"MM\x00*")
    ifd = tiff + _uint(b, tiff + 4, 4, little)
    count = tf.minimum(_uint(b, ifd, 2, little), _MAX_IFD_ENTRIES)
    entry = ifd + 2 + 12 * tf.range(count)
    # One SHORT (type 3) or LONG (type 4) value, stored in the entry itself.
    kind = _uint(b, entry + 2, 2, little)
    value = tf.where(tf.equal(kind, 3), _uint(b, entry + 8, 2, little), _uint(b, entry + 8, 4, little))
    match = (tf.equal(_uint(b, entry, 2, little), _ORIENTATION_TAG) & tf.equal(_uint(b, entry + 4, 4, little), 1)
             & ((kind == 3) | (kind == 4)))
    # Pillow keeps the last of repeated tags.
    values = tf.boolean_mask(value, match)
    orientation = tf.cond(tf.size(values) > 0, lambda: values[-1], lambda: tf.constant(1, tf.int64))
    valid = (start >= 0) & (little | big) & (orientation >= 1) & (orientation <= 8)
    return tf.where(valid, orientation, 1)


# ------------------------------------------------------------------ decoding in-graph
def _upright(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """The picture turned upright, as Pillow's ImageOps.exif_transpose turns it."""
    transpose = lambda x: tf.transpose(x, [1, 0, 2])  # noqa: E731 - Pillow's TRANSPOSE
    return tf.switch_case(tf.cast(orientation - 1, tf.int32), [
        lambda: image,                                  # 1
        lambda: image[:, ::-1],                         # 2 FLIP_LEFT_RIGHT
        lambda: image[::-1, ::-1],                      # 3 ROTATE_180
        lambda: image[::-1],                            # 4 FLIP_TOP_BOTTOM
        lambda: transpose(image),                       # 5 TRANSPOSE
        lambda: tf.image.rot90(image, 3),               # 6 ROTATE_270 (Pillow turns counter-clockwise)
        lambda: transpose(image[::-1, ::-1]),           # 7 TRANSVERSE
        lambda: tf.image.rot90(image, 1),               # 8 ROTATE_90
    ])


def _draft_ratio(data: tf.Tensor, size: int) -> tf.Tensor:
    """Pillow's draft: the largest of 8, 4, 2, 1 not above min(width, height) // size."""
    shape = tf.image.extract_jpeg_shape(data)
    scale = tf.minimum(shape[0] // size, shape[1] // size)
    return tf.reduce_sum(tf.cast(scale >= tf.constant([2, 4, 8]), tf.int32))


def _decode_jpeg(data: tf.Tensor, size: int) -> tf.Tensor:
    # INTEGER_ACCURATE: libjpeg's islow IDCT, Pillow's; TensorFlow's default is the fast one.
    return tf.switch_case(_draft_ratio(data, size), [
        (lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE"))
        for r in (1, 2, 4, 8)])


def _on_white(colour: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    colour, alpha = tf.cast(colour, tf.float32), tf.cast(alpha, tf.float32)
    return tf.cast(tf.floor((colour * alpha + _BACKGROUND * (255.0 - alpha)) / 255.0 + 0.5), tf.uint8)


def _is_gif(data: tf.Tensor) -> tf.Tensor:
    head = tf.strings.substr(data, 0, 6)
    return tf.logical_or(tf.equal(head, b"GIF87a"), tf.equal(head, b"GIF89a"))


def _gif_first_frame(b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(end, pixels) of a GIF's first frame: the offset just after its image data, -1 if the file
    holds no complete frame, and the frame's own width x height. Read from the bytes, walking the
    blocks (header, global colour table, extensions, the image descriptor and its data sub-blocks):
    TensorFlow's decode_gif decodes every frame (DGifSlurp) before `expand_animations=False` keeps
    the first, so a 200-frame file costs 200 frames of memory and time unless cut after the first."""
    n = tf.size(b, out_type=tf.int64)
    byte = lambda offset: _uint(b, offset, 1, False)  # noqa: E731 - 0 past the end
    table = lambda flags: tf.where(flags >= 0x80, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64),  # noqa: E731
                                                                          flags % 8), 0)

    def body(p, in_blocks, image, end, pixels):
        code = byte(p)
        # At a block's start: an extension (0x21, label) or an image descriptor (0x2C, 9 bytes,
        # local colour table, LZW code size); anything else (0x3B, the trailer) ends the walk.
        is_ext, is_image = tf.equal(code, 0x21), tf.equal(code, 0x2C)
        start_next = tf.where(is_ext, p + 2, tf.where(is_image, p + 11 + table(byte(p + 9)), n))
        frame = _uint(b, p + 5, 2, True) * _uint(b, p + 7, 2, True)
        # Inside data sub-blocks (a size byte, then that many bytes; size 0 ends them).
        last = tf.equal(code, 0)
        sub_next = p + 1 + code
        done = last & image
        return (tf.where(in_blocks, tf.where(done, n, sub_next), start_next),
                tf.where(in_blocks, ~last, is_ext | is_image),
                tf.where(in_blocks, image, image | is_image),
                tf.where(in_blocks & done, p + 1, end),
                tf.where(~in_blocks & is_image, frame, pixels))

    start = 13 + table(byte(10))
    _, _, _, end, pixels = tf.while_loop(
        lambda p, in_blocks, image, end, pixels: (end < 0) & (p < n), body,
        (start, tf.constant(False), tf.constant(False), tf.constant(-1, tf.int64), tf.constant(0, tf.int64)))
    return end, pixels


def _decode_gif_first_frame(data: tf.Tensor) -> tf.Tensor:
    """A GIF's first frame as RGB, the file cut after it (the other frames are never decoded);
    refused when it holds no complete frame or its frame is above MAX_PIXELS."""
    end, pixels = _gif_first_frame(tf.io.decode_raw(data, tf.uint8))
    checks = [tf.debugging.assert_non_negative(end, message="GIF without a complete first frame"),
              tf.debugging.assert_less_equal(pixels, tf.constant(MAX_PIXELS, tf.int64),
                                             message=f"GIF frame too large (more than {MAX_PIXELS} pixels; "
                                                     f"decompression bomb guard)")]
    with tf.control_dependencies(checks):
        first = tf.strings.join([tf.strings.substr(data, tf.constant(0, tf.int64), tf.maximum(end, 0)), b";"])
    return tf.io.decode_gif(first)[0]


def _decode_other(data: tf.Tensor) -> tf.Tensor:
    """PNG, WebP, GIF (first frame only), BMP -> 8-bit RGB: grey replicated, alpha composited on white."""
    image = tf.cond(_is_gif(data), lambda: _decode_gif_first_frame(data),
                    lambda: tf.io.decode_image(data, expand_animations=False))
    grey = lambda x: tf.tile(x, [1, 1, 3])  # noqa: E731
    return tf.switch_case(tf.shape(image)[2] - 1, [
        lambda: grey(image[..., :1]),
        lambda: grey(_on_white(image[..., :1], image[..., 1:2])),
        lambda: image[..., :3],
        lambda: _on_white(image[..., :3], image[..., 3:4]),
    ])


def _lanczos_pass(image: tf.Tensor, axis: int, offset: tf.Tensor, side: tf.Tensor, size: int) -> tf.Tensor:
    """Resize `side` pixels from `offset` along one axis (0 rows, 1 columns) to `size`, rounded to
    8 bits: one pass of Pillow's Lanczos resize with a box (its taps may read beyond the box)."""
    scale = tf.cast(size, tf.float32) / tf.cast(side, tf.float32)
    shape = tf.tensor_scatter_nd_update(tf.shape(image)[:2], [[axis]], [size])
    ones = tf.ones([2], tf.float32)
    out = tf.raw_ops.ScaleAndTranslate(
        images=image[tf.newaxis], size=shape,
        scale=tf.tensor_scatter_nd_update(ones, [[axis]], [scale]),
        translation=tf.tensor_scatter_nd_update(tf.zeros([2]), [[axis]], [-tf.cast(offset, tf.float32) * scale]),
        kernel_type="lanczos3", antialias=True)[0]
    return tf.clip_by_value(tf.floor(out + 0.5), 0.0, 255.0)


def _declared_pixels(data: tf.Tensor) -> tf.Tensor:
    """Width x height from a JPEG's, PNG's, GIF's (its logical screen, what decode_gif allocates),
    BMP's or WebP's header (0 for other formats), before decoding."""
    # Padded: the header reads need 30 bytes even of an empty or truncated file.
    head = tf.io.decode_raw(tf.strings.join([tf.strings.substr(data, 0, 30), b"\x00" * 30]), tf.uint8)
    jpeg = lambda: tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64))  # noqa: E731
    png = _uint(head, 16, 4, False) * _uint(head, 20, 4, False)
    gif = _uint(head, 6, 2, True) * _uint(head, 8, 2, True)
    # BMP: 32-bit signed width and height (a negative height: rows stored top-down).
    signed = lambda v: tf.minimum(v, 2**32 - v)  # noqa: E731
    bmp = signed(_uint(head, 18, 4, True)) * signed(_uint(head, 22, 4, True))
    # WebP: the canvas of an extended file (VP8X: 24-bit width-1, height-1), else the bitstream's
    # own 14-bit sizes (VP8L: width-1, height-1 packed; VP8: width, height after the start code).
    lossless = _uint(head, 21, 4, True)
    webp = tf.where(_is(head, 12, b"VP8X"), (_uint(head, 24, 3, True) + 1) * (_uint(head, 27, 3, True) + 1), tf.where(
        _is(head, 12, b"VP8L"), (lossless % 2**14 + 1) * (lossless // 2**14 % 2**14 + 1),
        (_uint(head, 26, 2, True) % 2**14) * (_uint(head, 28, 2, True) % 2**14)))
    is_webp = _is(head, 0, b"RIFF") & _is(head, 8, b"WEBP")
    other = tf.where(_is(head, 0, _PNG_SIGNATURE), png, tf.where(
        _is(head, 0, b"GIF8"), gif, tf.where(_is(head, 0, b"BM"), bmp, tf.where(
            is_webp, webp, tf.constant(0, tf.int64)))))
    return tf.cond(tf.io.is_jpeg(data), jpeg, lambda: other)


def decode_for_model(data: tf.Tensor, size: int) -> tf.Tensor:
    """One encoded file -> uint8 [size, size, 3] BGR: pipeline.decode.decode_image in TensorFlow ops.

    JPEGs, PNGs, GIFs, BMPs and WebPs above decode_image's MAX_PIXELS are refused before decoding
    (its decompression bomb guard); of a GIF only the first frame is decoded (as Pillow's first frame)."""
    too_large = tf.debugging.assert_less_equal(
        _declared_pixels(data), tf.constant(MAX_PIXELS, tf.int64),
        message=f"image too large (more than {MAX_PIXELS} pixels; decompression bomb guard)")
    with tf.control_dependencies([too_large]):
        data = tf.identity(data)
    rgb = tf.cond(tf.io.is_jpeg(data), lambda: _decode_jpeg(data, size), lambda: _decode_other(data))
    rgb = _upright(rgb, exif_orientation(data))
    height, width = tf.shape(rgb)[0], tf.shape(rgb)[1]
    side = tf.minimum(height, width)
    # Pillow resizes horizontally first, then vertically, each pass rounded to 8 bits.
    x = _lanczos_pass(tf.cast(rgb, tf.float32), 1, (width - side) // 2, side, size)
    x = _lanczos_pass(x, 0, (height - side) // 2, side, size)
    return tf.ensure_shape(tf.cast(x, tf.uint8)[..., ::-1], [size, size, 3])


def decode_batch(images: tf.Tensor, size: int) -> tf.Tensor:
    """A batch of encoded files (string [-1]) -> uint8 [-1, size, size, 3] BGR."""
    return tf.map_fn(lambda data: decode_for_model(data, size), images,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))


# ------------------------------------------------------------------ the export
def _named(probability: tf.Tensor, threshold: float = DECISION_THRESHOLD) -> dict[str, tf.Tensor]:
    probability = tf.reshape(probability, [-1])
    male = tf.cast(predicted_male(probability, threshold), tf.int32)
    return {PROBABILITY_OUTPUT: probability, LABEL_OUTPUT: tf.gather(tf.constant(LABEL_NAMES), male)}


def export_savedmodel(model: keras.Model, directory: str, threshold: float = DECISION_THRESHOLD) -> None:
    """Write the classifier's SavedModel to `directory` (replaced whole; a crash never leaves half of
    one there): the signatures of the module docstring, `label` deciding at `threshold`. ModelError
    if `model` is not a classifier."""
    threshold = checked_threshold(threshold)
    if not is_classifier(model):
        raise ModelError(f"cannot export {model.name!r} for serving: not a gender classifier "
                         f"(a single one-unit '{OUTPUT_LAYER}' probability output is needed)")
    size = image_size_of(model)
    pixels = tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")
    encoded = tf.TensorSpec([None], tf.string, name="images")
    endpoints = {
        SERVING_DEFAULT: (lambda image: _named(male_probability(model, image), threshold), pixels),
        SERVE_IMAGES: (lambda images: _named(male_probability(model, decode_batch(images, size)), threshold), encoded),
        # male_probability inside averaged: an empty request stays empty (and the model uncalled).
        SERVE_IMAGES_FLIP: (lambda images: _named(averaged(lambda x: male_probability(model, x),
                                                           decode_batch(images, size), TTA_FLIP), threshold), encoded),
        KERAS_SERVE: (lambda image: male_probability(model, image), pixels),
    }
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, spec) in endpoints.items():
        # autograph off: the functions are plain TensorFlow ops, nothing to convert.
        archive.add_endpoint(name, tf.function(fn, autograph=False), input_signature=[spec])

    with replacing(directory) as partial:
        archive.write_out(partial, verbose=False)
