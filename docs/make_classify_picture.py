"""Regenerate docs/classify_faces.png, the annotated photo the README shows for `classify --annotate`.

The photo: matplotlib's sample photograph grace_hopper.jpg, a mirrored copy of it turned by 20°,
and a copy too small for the default --min-face, side by side on grey. The picture is what the
real command writes (`cli.py classify --faces detect --annotate`), shrunk to 720 px wide and
reduced to 128 colours to stay small in the repository.

    .venv/bin/python docs/make_classify_picture.py [-m demo-work/gender_classifier.keras] [-o PNG]

The model defaults to the one `make demo` trains on SYNTHETIC faces: its labels on a real face mean
nothing; the picture shows what is drawn, not a prediction.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUTPUT = os.path.join(HERE, "classify_faces.png")
WIDTH = 720


def composite(path: str) -> None:
    import matplotlib.cbook
    from PIL import Image, ImageOps

    grace = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    turned = ImageOps.mirror(grace).rotate(20, resample=Image.Resampling.BICUBIC, expand=True,
                                           fillcolor=(225, 225, 225))
    small = grace.resize((grace.width // 6, grace.height // 6), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (grace.width + turned.width + small.width + 40, turned.height), (225, 225, 225))
    canvas.paste(grace, (10, (turned.height - grace.height) // 2))
    canvas.paste(turned, (grace.width + 20, 0))
    canvas.paste(small, (grace.width + turned.width + 30, turned.height - small.height - 40))
    canvas.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", default=os.path.join(ROOT, "demo-work", "gender_classifier.keras"))
    parser.add_argument("-o", "--output", default=OUTPUT, help=f"the PNG to write (default {OUTPUT})")
    args = parser.parse_args()
    if not os.path.exists(args.model):
        print(f"error: no model at {args.model}; run `make demo` first (or pass -m)", file=sys.stderr)
        return 2
    from PIL import Image

    with tempfile.TemporaryDirectory() as work:
        photo = os.path.join(work, "photo.png")
        composite(photo)
        annotated = os.path.join(work, "annotated")
        status = subprocess.call([sys.executable, os.path.join(ROOT, "cli.py"), "classify", "-m", args.model,
                                  "-i", photo, "--faces", "detect", "--annotate", annotated], cwd=work)
        if status != 0:
            print(f"error: classify exited with {status}", file=sys.stderr)
            return 1
        picture = Image.open(os.path.join(annotated, "photo.png")).convert("RGB")
        picture = picture.resize((WIDTH, round(picture.height * WIDTH / picture.width)), Image.Resampling.LANCZOS)
        picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
