"""Benchmark: `classify --faces detect` on photos, faces batched across photos against one photo at a
time, same model, same photos, side by side in one run.

Photos: composites of matplotlib's grace_hopper.jpg (a real photograph shipped with matplotlib): each
picture holds 1 to 4 copies of the face, some mirrored, at different scales and places, on a
background cut from the same photo (640×480 to 1024×768 JPEGs, generated once into bench/work/).
- one photo at a time: for each photo, decode, detect (MTCNN), align its faces and call the model
  once on them: what a detect-then-classify loop does (deepface's way: one image per call);
- batched: `model.inference.classify.ClassifyStream` (decode + detection in the thread pool, a window ahead,
  the faces of many photos batched into one model call of --batch-size).
A third figure, detection alone one photo at a time, tells how much of the time is the detector.

Two classifiers, each measured side by side: slim (VGG-Face topology, SLIM_WIDTHS: cheap, as on a
GPU) and full (the real VGG-Face structure through relu4_2: about 24 GFLOP per face on these CPUs).

    .venv/bin/python bench/bench_faces.py [--photos 40] [--batch-size 64] [--skip-full]

The last line printed is one JSON object for `make bench` (bench/run_all.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from model.contract import image_size_of  # noqa: E402
from model.inference.classify import ClassifyStream, make_forward  # noqa: E402
from model.inference.faces.align import align_face  # noqa: E402
from model.inference.faces.detect import DEFAULT_MIN_FACE, FaceDetector  # noqa: E402
from model.inference.inputs import Entry  # noqa: E402
from pipeline.decode import load_photo  # noqa: E402

SIZES = ((640, 480), (800, 600), (1024, 768))


def photos(count: int, seed: int = 0) -> list[str]:
    """Paths of the cached composite photos (generated once)."""
    import matplotlib.cbook

    root = os.path.join(HERE, "work", f"faces-{count}-seed{seed}")
    stamp = os.path.join(root, "GENERATED")
    if not os.path.exists(stamp):
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        grace = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
        face = grace.crop((140, 60, 390, 360))             # the head with some margin
        rng = np.random.default_rng(seed)
        for i in range(count):
            w, h = SIZES[i % len(SIZES)]
            x0, y0 = rng.integers(0, grace.width - 64), rng.integers(380, grace.height - 64)
            picture = grace.crop((x0, y0, x0 + 64, y0 + 64)).resize((w, h), Image.Resampling.BICUBIC)
            n = 1 + i % 4
            for j in range(n):
                side = int(w / n * rng.uniform(0.55, 0.9))
                copy = face.resize((side, side * 300 // 250), Image.Resampling.LANCZOS)
                if rng.random() < 0.5:
                    copy = copy.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                x = j * w // n + rng.integers(0, max(1, w // n - side))
                y = rng.integers(0, max(1, h - copy.height))
                picture.paste(copy, (int(x), int(y)))
            picture.save(os.path.join(root, f"photo_{i:04d}.jpg"), quality=90)
        with open(stamp, "w") as f:
            f.write(f"{count} {seed}\n")
    paths = sorted(os.path.join(root, n) for n in os.listdir(root) if n.endswith(".jpg"))
    for p in paths:                                          # no contestant pays for the first disk read
        with open(p, "rb") as f:
            f.read()
    return paths


def one_photo_at_a_time(model, forward, detector: FaceDetector, paths: list[str]) -> tuple[float, list[float]]:
    """faces/s and scores: decode, detect, align, one model call per photo."""
    size = image_size_of(model)
    scores: list[float] = []
    faces = 0
    started = time.perf_counter()
    for p in paths:
        photo = load_photo(p)
        found = [f for f in detector.detect(np.asarray(photo)) if f.size >= DEFAULT_MIN_FACE]
        if found:
            scores += list(forward(np.stack([align_face(photo, f.landmarks, size) for f in found])))
            faces += len(found)
    return faces / (time.perf_counter() - started), scores


def batched(model, forward, paths: list[str], batch_size: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    rows = list(ClassifyStream(model, [Entry(p) for p in paths], faces="detect", batch_size=batch_size,
                               forward=forward))
    seconds = time.perf_counter() - started
    if any(r.error for r in rows):
        raise SystemExit(f"unexpected rows without a face: {[(r.path, r.error) for r in rows if r.error][:3]}")
    return len(rows) / seconds, [r.score for r in rows]


def detection_alone(detector: FaceDetector, paths: list[str]) -> tuple[float, int]:
    """photos/s and faces found: decode + detect only, one photo at a time."""
    started = time.perf_counter()
    faces = sum(len(detector.detect(np.asarray(load_photo(p)))) for p in paths)
    return len(paths) / (time.perf_counter() - started), faces


def measure(name: str, widths, paths: list[str], batch_size: int, detector: FaceDetector) -> tuple[list[dict], str]:
    from model.network.head import build_classifier
    from model.network.vggface import build_vggface

    model = build_classifier(build_vggface(widths, 224))
    forward = make_forward(model)
    forward(np.zeros((2, 224, 224, 3), np.uint8))             # trace once, outside the timings
    rate_b, scores_b = batched(model, forward, paths, batch_size)
    rate_s, scores_s = one_photo_at_a_time(model, forward, detector, paths)
    diff = float(np.max(np.abs(np.array(scores_b) - np.array(scores_s))))
    print(f"[{name}] batched across photos (batch {batch_size}): {rate_b:,.2f} faces/s")
    print(f"[{name}] one photo at a time: {rate_s:,.2f} faces/s -> batched is {rate_b / rate_s:.2f}x")
    print(f"[{name}] {len(scores_b)} faces; largest score difference batched vs one at a time: {diff:.2e}",
          flush=True)
    rows = [
        {"what": f"{name}: one photo at a time (decode, detect, align, one model call per photo)",
         "images_per_s": round(rate_s, 2)},
        {"what": f"{name}: faces batched across photos (ClassifyStream, batch {batch_size}), faces/s",
         "images_per_s": round(rate_b, 2), "baseline": round(rate_s, 2), "ratio": round(rate_b / rate_s, 2)},
    ]
    return rows, f"{name}: {len(scores_b)} faces scored both ways, largest score difference {diff:.1e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=40, help="composite photos (1-4 faces each)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-full", action="store_true", help="only the slim classifier")
    args = parser.parse_args()

    from model.network.vggface import FULL_WIDTHS, SLIM_WIDTHS

    paths = photos(args.photos)
    detector = FaceDetector()
    detector.detect(np.asarray(load_photo(paths[0])))          # load the detector outside the timings
    load_before = os.getloadavg()[0]
    rate_d, faces = detection_alone(detector, paths)
    print(f"{len(paths)} photos, {faces} faces, {os.cpu_count()} CPU cores; detection alone: {rate_d:.2f} photos/s "
          f"({rate_d * faces / len(paths):.2f} faces/s)", flush=True)
    rows = [{"what": f"decode + detection alone (MTCNN), one photo at a time, {len(paths)} photos: photos/s",
             "images_per_s": round(rate_d, 2)}]
    notes = [f"{len(paths)} composite photos of grace_hopper.jpg (640x480 to 1024x768 JPEG, 1-4 faces each, "
             f"{faces} faces); rates are faces/s unless said."]
    slim_rows, note = measure("slim", SLIM_WIDTHS, paths, args.batch_size, detector)
    rows += slim_rows
    notes.append(note)
    if not args.skip_full:
        full_rows, note = measure("full", FULL_WIDTHS, paths, args.batch_size, detector)
        rows += full_rows
        notes.append(note)
    notes.append(f"load average before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}. On 2 cores TensorFlow "
                 "already spreads one detection or one model call over both, so the thread pool overlaps "
                 "decoding and alignment with them rather than adding cores; batching pays where per-call "
                 "overhead matters (many small model calls), as on a GPU.")
    print(json.dumps({"bench": "faces", "rows": rows, "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
