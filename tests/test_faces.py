"""Faces in photos: detection (MTCNN), alignment like Adience's aligned faces, `classify --faces`.

On a real photograph that ships with matplotlib (grace_hopper.jpg, 512×600, one face) and
composites made from it: two faces side by side, the photo turned by 20°, the face scaled below
the minimum size, and a part of the photo without a face.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT

TURN = 20          # degrees, counter-clockwise on screen (PIL's rotate)
SMALL = 0.12       # scale of the small face: its box is about 21×26 px


def grace_path() -> str:
    import matplotlib.cbook

    return str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def turned_point(xy, size, turned_size, degrees=TURN):
    """Where a point of a picture of `size` lands in PIL's rotate(degrees, expand=True) of it."""
    t = math.radians(degrees)
    dx, dy = xy[0] - size[0] / 2, xy[1] - size[1] / 2
    return (math.cos(t) * dx + math.sin(t) * dy + turned_size[0] / 2,
            -math.sin(t) * dx + math.cos(t) * dy + turned_size[1] / 2)


@pytest.fixture(scope="module")
def grace() -> Image.Image:
    from pipeline.decode import load_photo

    return load_photo(grace_path())


@pytest.fixture(scope="module")
def photos(grace, tmp_path_factory) -> dict[str, str]:
    """The composites, as files in one folder (PNG: no second JPEG loss)."""
    root = tmp_path_factory.mktemp("photos")
    w, h = grace.size
    two = Image.new("RGB", (2 * w, h))
    two.paste(grace, (0, 0))
    two.paste(grace, (w, 0))
    small = Image.new("RGB", (400, 300), (200, 200, 190))
    small.paste(grace.resize((round(w * SMALL), round(h * SMALL)), Image.Resampling.LANCZOS), (150, 100))
    pictures = {
        "grace.png": grace,
        "two.png": two,
        "turned.png": grace.rotate(TURN, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(128, 128, 128)),
        "small.png": small,
        "noface.png": grace.crop((0, 400, w, h)),       # flag, uniform, medals: no face
    }
    paths = {}
    for name, picture in pictures.items():
        paths[name] = str(root / name)
        picture.save(paths[name])
    return paths


@pytest.fixture(scope="module")
def detector():
    from model.inference.faces.detect import FaceDetector

    return FaceDetector()


@pytest.fixture(scope="module")
def found(photos, detector) -> dict:
    """Every composite's detections (MTCNN runs once per picture for the whole module)."""
    from pipeline.decode import load_photo

    return {name: detector.detect(np.asarray(load_photo(path))) for name, path in photos.items()}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    import cli

    status = cli.main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


def _grey(bgr: np.ndarray, side: int = 28) -> np.ndarray:
    im = Image.fromarray(np.ascontiguousarray(bgr[..., ::-1])).convert("L")
    return np.asarray(im.resize((side, side), Image.Resampling.BOX), dtype=np.float64) / 255


# ------------------------------------------------------------------ detection
def test_one_face_with_its_landmarks_in_the_photo(found):
    faces = found["grace.png"]
    assert len(faces) == 1
    face = faces[0]
    x, y, w, h = face.box
    # The face in grace_hopper.jpg (512×600): about x 180-350, y 110-330 (forehead under the cap to chin).
    assert iou(face.box, (180, 110, 170, 220)) > 0.7, face.box
    assert face.confidence > 0.9
    eyes, nose, mouth = face.landmarks[:2], face.landmarks[2], face.landmarks[3:]
    assert ((face.landmarks >= [x, y]) & (face.landmarks <= [x + w, y + h])).all()
    assert eyes[0, 0] < nose[0] < eyes[1, 0] and mouth[0, 0] < nose[0] < mouth[1, 0]
    assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()


def test_two_faces_side_by_side_left_to_right_on_each_copy(found, grace):
    single = found["grace.png"][0].box
    faces = found["two.png"]
    assert len(faces) == 2
    for i, face in enumerate(faces):
        expected = (single[0] + i * grace.width, *single[1:])
        assert iou(face.box, expected) > 0.8, (i, face.box, expected)


def test_the_turned_face_is_found_where_the_face_went(found, grace, photos):
    faces = found["turned.png"]
    assert len(faces) == 1
    x, y, w, h = found["grace.png"][0].box
    turned_size = Image.open(photos["turned.png"]).size
    cx, cy = turned_point((x + w / 2, y + h / 2), grace.size, turned_size)
    fx, fy, fw, fh = faces[0].box
    assert math.hypot(fx + fw / 2 - cx, fy + fh / 2 - cy) < 0.15 * w
    from model.inference.faces.align import eye_roll

    # The eye line turned with the photo (PIL turns counter-clockwise: the roll goes negative).
    roll = math.degrees(eye_roll(faces[0].landmarks) - eye_roll(found["grace.png"][0].landmarks))
    assert abs(roll + TURN) < 5, roll


def test_no_face_in_a_part_of_the_photo_without_one(found):
    assert found["noface.png"] == []


def test_small_face_is_found_and_measured_small(found):
    faces = found["small.png"]
    assert len(faces) == 1
    assert faces[0].size < 40       # below the default --min-face
    assert iou(faces[0].box, (150 + 180 * SMALL, 100 + 110 * SMALL, 170 * SMALL, 220 * SMALL)) > 0.5


# ------------------------------------------------------------------ alignment
def test_alignment_puts_landmarks_where_adience_has_them():
    """A picture with dots at five landmarks, turned, shifted and scaled: after alignment the dots
    are at the template's places (eyes level, Adience's eye distance and height)."""
    from model.inference.faces.align import ALIGNED_SIZE, TEMPLATE, aligned_square

    t, s, shift = math.radians(-25), 0.4, np.array([150.0, 90.0])
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    landmarks = TEMPLATE @ rot.T * s + shift
    picture = Image.new("RGB", (600, 600), (0, 0, 0))
    pixels = np.asarray(picture).copy()
    for i, (px, py) in enumerate(landmarks):
        pixels[round(py) - 1:round(py) + 2, round(px) - 1:round(px) + 2] = (255, 40 * i, 0)
    out = np.asarray(aligned_square(Image.fromarray(pixels), landmarks)).astype(float)
    assert out.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    for i, (tx, ty) in enumerate(TEMPLATE):
        near = out[int(ty) - 12:int(ty) + 13, int(tx) - 12:int(tx) + 13]
        weights = near[..., 0] * (np.abs(near[..., 1] - 40 * i) < 20)
        yy, xx = np.mgrid[int(ty) - 12:int(ty) + 13, int(tx) - 12:int(tx) + 13]
        centre = (xx * weights).sum() / weights.sum(), (yy * weights).sum() / weights.sum()
        assert math.hypot(centre[0] - tx, centre[1] - ty) < 2.0, (i, centre, (tx, ty))


def test_adience_geometry_of_the_template():
    from model.inference.faces.align import ALIGNED_SIZE, TEMPLATE

    (lx, ly), (rx, ry) = TEMPLATE[:2]
    assert abs(ly - ry) < 1.5 and abs((lx + rx) / 2 - ALIGNED_SIZE / 2) < 1
    assert (rx - lx) / ALIGNED_SIZE == pytest.approx(0.2206, abs=1e-3)      # 180 of 816 px
    assert (ly + ry) / 2 / ALIGNED_SIZE == pytest.approx(0.2958, abs=2e-3)  # 241.3 of 816 px


def test_the_turned_and_detected_face_is_cropped_like_the_upright_one(found, grace, photos):
    """Alignment works: the crop of the face found in the turned photo is close to the crop of the
    upright face. Metric: mean absolute difference of the two 224-px crops in greyscale, 0..1,
    averaged down to 28×28 (what is compared is where the face is, not the JPEG grain).
    Threshold 0.10 (measured 0.04 at +20°; the detector's landmarks move a few pixels between the
    two photos), and at most half the difference without the roll correction (measured 0.19)."""
    from model.inference.faces.align import align_face, eye_roll
    from pipeline.decode import load_photo

    upright = _grey(align_face(grace, found["grace.png"][0].landmarks))
    turned = load_photo(photos["turned.png"])
    landmarks = found["turned.png"][0].landmarks
    aligned = np.abs(_grey(align_face(turned, landmarks)) - upright).mean()
    # The same crop without the roll correction: the eyes put level along the image axes.
    centre, half = landmarks[:2].mean(axis=0), np.hypot(*(landmarks[1] - landmarks[0])) / 2
    roll = eye_roll(landmarks)
    unrolled = landmarks.copy()
    unrolled[2:] = centre + (landmarks[2:] - centre) @ np.array([[math.cos(roll), -math.sin(roll)],
                                                                  [math.sin(roll), math.cos(roll)]])
    unrolled[0], unrolled[1] = centre - [half, 0], centre + [half, 0]
    not_rolled = np.abs(_grey(align_face(turned, unrolled)) - upright).mean()
    assert aligned < 0.10, aligned
    assert aligned < 0.5 * not_rolled, (aligned, not_rolled)


def test_decode_photo_then_model_input_is_decode_image():
    """The face crops go through decode_image's own last step: on a PNG (no JPEG draft) the two
    paths give identical pixels."""
    import io

    from pipeline.decode import decode_image, decode_photo, to_model_input

    buffer = io.BytesIO()
    Image.open(grace_path()).save(buffer, "PNG")
    data = buffer.getvalue()
    assert np.array_equal(to_model_input(decode_photo(data), 224), decode_image(data, 224))
    # A photo stored sideways with an EXIF orientation is searched upright, as decode_image sees it
    # (the JPEG path differs only by decode_image's DCT-domain shortcut: a few grey levels).
    from pipeline.synthetic.tree import EXIF_ORIENTATION

    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    buffer = io.BytesIO()
    Image.open(grace_path()).rotate(90, expand=True).save(buffer, "JPEG", quality=95, exif=exif)
    photo = decode_photo(buffer.getvalue())
    assert photo.size == (512, 600)
    diff = np.abs(to_model_input(photo, 224).astype(int) - decode_image(buffer.getvalue(), 224).astype(int))
    assert diff.mean() < 3.0, diff.mean()


def test_looks_aligned_only_for_a_crop_laid_out_like_adience(grace, found, detector):
    from model.inference.faces.align import aligned_square, looks_aligned

    crop = aligned_square(grace, found["grace.png"][0].landmarks)
    again = detector.detect(np.asarray(crop))
    assert len(again) == 1 and looks_aligned(crop.width, crop.height, again[0].landmarks)
    # The photo itself, and a square with the face at 60 % of the crop's size, are not aligned crops.
    assert not looks_aligned(grace.width, grace.height, found["grace.png"][0].landmarks)
    zoomed = Image.new("RGB", crop.size)
    zoomed.paste(crop.resize((490, 490)), (163, 100))
    faces = detector.detect(np.asarray(zoomed))
    assert len(faces) == 1 and not looks_aligned(zoomed.width, zoomed.height, faces[0].landmarks)


# ------------------------------------------------------------------ classify on photos
def test_classify_photos_rows_exit_status_and_annotated_pictures(classifier_path, photos, found, tmp_path, capsys):
    folder = os.path.dirname(photos["grace.png"])
    annotated = tmp_path / "annotated"
    status, out, err = _run(["classify", "-m", classifier_path, "-i", folder, "--faces", "detect", "--format",
                             "jsonl", "--annotate", str(annotated)], capsys)
    assert status == 1                                     # small.png and noface.png: no face classified
    rows = [json.loads(line) for line in out.splitlines()]
    by_file: dict[str, list] = {}
    for row in rows:
        by_file.setdefault(os.path.basename(row["path"]), []).append(row)
    assert {name: len(r) for name, r in by_file.items()} == {"grace.png": 1, "noface.png": 1, "small.png": 1,
                                                             "turned.png": 1, "two.png": 2}
    assert [r["face"] for r in by_file["two.png"]] == [0, 1]
    for name in ("grace.png", "two.png", "turned.png"):
        for row, face in zip(by_file[name], found[name]):
            assert row["error"] is None and row["crop"] == "detected"
            assert row["box"] == [round(v) for v in face.box]
            assert row["confidence"] == pytest.approx(face.confidence, abs=1e-6)
            assert row["label"] == ("male" if row["score"] > 0.5 else "female")
    assert by_file["noface.png"][0]["error"] == "no face found"
    assert by_file["small.png"][0]["error"] == "no face of at least 40 px found (1 smaller skipped)"
    assert all(r["label"] is None and r["score"] is None for name in ("noface.png", "small.png") for r in by_file[name])
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("classified 4 faces in 3 of 5 files")
    assert "2 failed" in summary and "1 faces smaller than 40 px skipped" in summary
    # One annotated picture per photo, the paths mirrored under the folder; boxes drawn in colour.
    from model.inference.faces.annotate import COLOURS, annotated_path

    for name, path in photos.items():
        target = annotated_path(str(annotated), path)
        assert os.path.isfile(target), target
        picture = np.asarray(Image.open(target).convert("RGB")).astype(int)
        assert picture.shape[:2] == Image.open(path).size[::-1]
        for row in by_file[name]:
            if row["box"]:
                x, y, w, h = row["box"]
                edge = picture[y + h // 2, max(0, x - 1):x + 2]     # the box's left side, half-way down
                assert np.abs(edge - COLOURS[row["label"]]).sum(axis=1).min() < 60, (name, edge)


def test_min_face_flag_keeps_the_small_face(classifier_path, photos, capsys):
    status, out, err = _run(["classify", "-m", classifier_path, "-i", photos["small.png"], "--faces", "detect",
                             "--min-face", "12", "--format", "csv"], capsys)
    assert status == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[1].split(",")[7] == "detected"
    assert "skipped" not in err


def test_faces_of_many_photos_batched_score_as_one_photo_at_a_time(model, photos):
    from model.inference.classify import ClassifyStream, make_forward
    from model.inference.inputs import Entry

    paths = [photos[n] for n in ("two.png", "grace.png", "turned.png", "noface.png", "two.png")]
    forward = make_forward(model)
    batched = list(ClassifyStream(model, [Entry(p) for p in paths], faces="detect", batch_size=4, workers=2,
                                  forward=forward))
    alone = [row for p in paths for row in ClassifyStream(model, [Entry(p)], faces="detect", batch_size=1,
                                                          workers=1, forward=forward)]
    assert [(r.path, r.face, r.error) for r in batched] == [(r.path, r.face, r.error) for r in alone]
    assert len([r for r in batched if r.score is not None]) == 6
    for b, a in zip(batched, alone):
        if a.score is not None:
            assert b.score == pytest.approx(a.score, abs=1e-5) and b.box == a.box


# ------------------------------------------------------------------ --faces auto
def test_auto_leaves_aligned_crops_alone_and_detects_on_photos(classifier_path, grace, found, photos, tmp_path,
                                                              capsys):
    """The rule: a file named landmark_aligned_face.* is a crop (no detection); a square picture whose
    one face's aligned square is about the picture itself is a crop; anything else is a photo."""
    from model.inference.faces.align import aligned_square

    named = tmp_path / "landmark_aligned_face.1.grace.png"        # a whole photo, but named as a crop
    grace.save(named)
    crop = tmp_path / "grace_crop.png"                            # an aligned crop under another name
    aligned_square(grace, found["grace.png"][0].landmarks).save(crop)
    inputs = [str(named), str(crop), photos["grace.png"]]

    def rows(mode: str) -> list[dict]:
        status, out, _ = _run(["classify", "-m", classifier_path, "-i", *inputs, "--faces", mode,
                               "--format", "json"], capsys)
        assert status == 0
        return json.loads(out)

    auto, aligned, detect = rows("auto"), rows("aligned"), rows("detect")
    assert [r["crop"] for r in auto] == ["input", "input", "detected"]
    assert auto[0]["box"] is None and auto[1]["box"] is not None and auto[2]["box"] is not None
    # A crop is classified exactly as --faces aligned does; the photo exactly as --faces detect does.
    for got, want in ((auto[0], aligned[0]), (auto[1], aligned[1]), (auto[2], detect[2])):
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
    assert all(r["crop"] == "input" for r in aligned) and all(r["crop"] == "detected" for r in detect)


def test_aligned_mode_and_other_commands_never_import_the_detector(classifier_path, photos):
    code = ("import sys, cli\n"
            f"status = cli.main(['classify', '-m', {classifier_path!r}, '-i', {photos['grace.png']!r}, "
            "'--faces', 'aligned', '--format', 'csv'])\n"
            "cli.build_parser().parse_args(['classify', '-m', 'm', '-i', 'x'])\n"
            "print('mtcnn' in sys.modules, status)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "False 0", proc.stdout + proc.stderr


def test_single_photo_with_one_face_prints_the_familiar_block(classifier_path, photos, capsys):
    status, out, _ = _run(["classify", "-m", classifier_path, "-i", photos["grace.png"]], capsys)
    assert status == 0 and out.startswith("****\noutput class is ") and out.count("****") == 2


def test_single_photo_with_two_faces_prints_the_table_and_the_summary(classifier_path, photos, capsys):
    status, out, err = _run(["classify", "-m", classifier_path, "-i", photos["two.png"]], capsys)
    lines = out.splitlines()
    assert status == 0 and lines[0].split()[:3] == ["label", "score", "face"]
    assert [line.split()[2] for line in lines[1:]] == ["0", "1"]
    assert err.strip().splitlines()[-1].startswith("classified 2 faces in 1 of 1 files")


def test_single_photo_without_a_face_is_one_error_line_exit_1(classifier_path, photos, capsys):
    status, out, err = _run(["classify", "-m", classifier_path, "-i", photos["noface.png"]], capsys)
    assert status == 1 and out == ""
    assert err.strip().splitlines()[-1] == f"error: {photos['noface.png']}: no face found"


def test_bad_min_face_is_one_line_exit_2(classifier_path, photos, capsys):
    status, out, err = _run(["classify", "-m", classifier_path, "-i", photos["grace.png"], "--min-face", "0"],
                            capsys)
    assert status == 2 and out == ""
    assert err.strip().splitlines()[-1] == "error: --min-face must be a positive number of pixels, got 0"


def test_the_readme_picture_is_made_by_its_script(classifier_path, tmp_path):
    """docs/classify_faces.png is what docs/make_classify_picture.py writes (the real command's
    --annotate output, shrunk): the script runs, and the committed picture has its size."""
    target = tmp_path / "picture.png"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "make_classify_picture.py"), "-m",
                           classifier_path, "-o", str(target)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "classified 2 faces in 1 of 1 files" in proc.stderr and "1 faces smaller than 40 px skipped" in proc.stderr
    made, committed = Image.open(target), Image.open(os.path.join(ROOT, "docs", "classify_faces.png"))
    assert made.size == committed.size and made.size[0] == 720
    assert "docs/classify_faces.png" in open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
