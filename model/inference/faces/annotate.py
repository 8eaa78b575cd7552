"""`classify --annotate DIR`: each picture written again with what was found drawn on it (Pillow),
so that a person can check the result at a glance: every classified face's box, its five
landmarks, its index, label and score (P(male)); faces skipped as too small in thin grey; a
banner for a file classified whole (an aligned crop) or one where no face was found.
"""
from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont

from model.inference.inputs import IMAGE_EXTENSIONS
from pipeline.files import is_remote, replacing
from model.inference.prepare import CROP_INPUT
from pipeline.errors import DataError

COLOURS = {"female": (240, 110, 30), "male": (30, 150, 230)}
LANDMARK_COLOUR = (255, 230, 0)
SKIPPED_COLOUR = (170, 170, 170)
ERROR_COLOUR = (220, 30, 30)
TEXT_COLOUR = (255, 255, 255)


def annotated_path(out_dir: str, path: str) -> str:
    """Where the annotated copy of `path` goes: its path mirrored under out_dir (relative to the
    working directory when inside it, else absolute), so two inputs never share an output."""
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        rel = os.path.join(scheme, rest)
    else:
        absolute = os.path.abspath(path)
        rel = os.path.relpath(absolute)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            rel = os.path.splitdrive(absolute)[1].lstrip(os.sep)
    if os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS:
        rel += ".png"
    return os.path.join(out_dir, rel)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill, font, above: bool) -> None:
    """Text on a filled box, just above xy (or below it when there is no room above)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 5)
    height = bottom + 2 * pad
    y = xy[1] - height if above and xy[1] - height >= 0 else xy[1]
    draw.rectangle((xy[0], y, xy[0] + right + 2 * pad, y + height), fill=fill)
    draw.text((xy[0] + pad, y + pad), text, fill=TEXT_COLOUR, font=font)


def draw_results(picture: Image.Image, prepared) -> Image.Image:
    """A copy of `picture` (the photo shrunk by prepared.scale) with prepared's rows drawn on it."""
    out = picture.convert("RGB")
    draw = ImageDraw.Draw(out)
    side = max(out.size)
    width = max(2, round(side / 300))
    font = ImageFont.load_default(size=max(14, round(side / 45)))
    k = prepared.scale
    for face in prepared.small:
        x, y, w, h = (v * k for v in face.box)
        draw.rectangle((x, y, x + w, y + h), outline=SKIPPED_COLOUR, width=max(1, width // 2))
    for row, landmarks in zip(prepared.rows, prepared.landmarks + [None] * len(prepared.rows)):
        if row.error is not None:
            _label(draw, (0, 0), row.error, ERROR_COLOUR, font, above=False)
            continue
        colour = COLOURS.get(row.label, ERROR_COLOUR)
        text = f"{row.label} p(male)={row.score:.2f}"
        if row.box is None:
            _label(draw, (0, 0), f"{text} (whole picture: an aligned crop)", colour, font, above=False)
            continue
        x, y, w, h = (v * k for v in row.box)
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=width)
        if landmarks is not None:
            r = width + 1
            for px, py in landmarks * k:
                draw.ellipse((px - r, py - r, px + r, py + r), fill=LANDMARK_COLOUR)
        prefix = "" if row.crop == CROP_INPUT else f"#{row.face} "
        _label(draw, (x, y), prefix + text, colour, font, above=True)
    return out


def save_annotated(out_dir: str, prepared) -> str:
    """Draw prepared's results on its picture and write it under out_dir; DataError if it cannot."""
    target = annotated_path(out_dir, prepared.path)
    image = draw_results(prepared.picture, prepared)
    try:
        # The outputs check refuses this before any work; a link made since must not lose the input.
        if not is_remote(prepared.path) and os.path.exists(target) and os.path.samefile(target, prepared.path):
            raise DataError(f"the annotated picture {target} is the input {prepared.path}; pass another "
                            f"`annotate_dir` folder")
        # Written beside and renamed: a picture there is replaced whole, never written through
        # (a hard link there to another file leaves that file as it is).
        with replacing(target, suffix=os.path.splitext(target)[1]) as partial:
            if target.lower().endswith((".jpg", ".jpeg")):
                image.save(partial, quality=90)
            else:
                image.save(partial)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot write the annotated picture {target} ({getattr(err, 'strerror', None) or err}); "
                        f"pass a writable `annotate_dir` folder") from None
    return target
