"""Face alignment like Adience's `landmark_aligned_face.*` crops: eyes level, a square with
Adience's margin, then the training decode-to-size path.

It turns a photo plus five landmarks into the same kind of image `preprocess` makes.

Where Adience puts a face. Adience's alignment code (the `adience_align` package by the dataset's
authors) fits a 68-point frontal face model, drawn in a 544-px frame, to each face's fiducial
points and warps the face (cubic interpolation, black outside the source) into that frame
widened by 25 % of 544 = 136 px on every side: 544 + 2 × 136 = 816, the size of the aligned
faces. In that 816-px square the model's two eyes (the mean of each eye's six points) lie at
(318, 241.3) and (498, 241.3): level, 180 px apart, centred, 241.3 px from the top. The two
example faces that ship with that code's tests, aligned by it, land at 176 and 181 px apart with
their eye midpoints at (410, 246) and (413, 246): the template holds for real faces within a few
pixels. Hence the constants below: the eye distance is 0.221 of the side (the crop is 4.53 eye
distances wide), the eyes' midpoint at half the width and 0.296 of the height from the top.

The transform is a similarity (the face keeps its proportions): its rotation makes the eyes
level; its scale and shift are the least-squares fit of the detector's five landmarks (eyes, nose
tip, mouth corners) to a five-point layout whose eyes are Adience's and whose nose and mouth follow
the mean layout of such landmarks (insightface's ArcFace reference face, scaled and placed so that
its eyes sit on Adience's). Fitting five points rather than two damps the detector's landmark
noise: on matplotlib's grace_hopper.jpg turned by ±10° and ±20°, the crop of the turned photo
differed from the upright one's by a mean of 0.080 (eyes only) against 0.066 (five points), in
greyscale 0..1 at 56×56 (tests/test_faces.py). Adience's own fit is affine over 68 points, which
five landmarks cannot reproduce: its crops may be a little more stretched than ours.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pipeline.decode import to_model_input
from pipeline.schema import DEFAULT_IMAGE_SIZE

# Adience's aligned-face square and where the eyes are in it (derivation in the module docstring).
ALIGNED_SIZE = 816
EYE_DISTANCE = 180.0 / ALIGNED_SIZE          # of the side
EYE_CENTRE = (408.0, 241.33)                 # in the 816-px square

# insightface's ArcFace reference layout of the five landmarks in a 112-px square (the mean
# positions of detector landmarks on aligned faces): eyes, nose tip, mouth corners.
_ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]])
# ... scaled and shifted so that its eyes are Adience's: the target of the fit, in the 816 square.
_ARC_EYES = _ARCFACE_112[:2].mean(axis=0)
_ARC_SCALE = EYE_DISTANCE * ALIGNED_SIZE / float(np.hypot(*(_ARCFACE_112[1] - _ARCFACE_112[0])))
TEMPLATE = (_ARCFACE_112 - _ARC_EYES) * _ARC_SCALE + np.array(EYE_CENTRE)

# How far a picture's own alignment may be from the picture itself for it to count as an aligned
# crop already: landmarks wander a few percent of the face; a photo is rarely framed so by chance.
ALIGNED_TOLERANCE = {"centre": 0.06, "side_ratio": 1.25, "roll_degrees": 10.0, "aspect": 0.01}

# Landmark rows (the detector's order): the eye on the image's left, the other eye, nose tip,
# mouth corner on the image's left, the other mouth corner.
LEFT_EYE, RIGHT_EYE = 0, 1


def eye_roll(landmarks: np.ndarray) -> float:
    """Angle (radians, clockwise on screen) of the line from the left eye to the right eye."""
    dx, dy = np.asarray(landmarks[RIGHT_EYE], float) - np.asarray(landmarks[LEFT_EYE], float)
    return float(math.atan2(dy, dx))


def similarity(landmarks: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(scale s, roll, shift t) of the map photo -> 816 square, q = s·R(-roll)·p + t: eyes level,
    s and t the least-squares fit of the five landmarks to TEMPLATE."""
    points = np.asarray(landmarks, float)
    roll = eye_roll(points)
    c, s_ = math.cos(-roll), math.sin(-roll)
    rotated = points @ np.array([[c, s_], [-s_, c]])            # each row R(-roll)·p
    p0, q0 = rotated - rotated.mean(axis=0), TEMPLATE - TEMPLATE.mean(axis=0)
    scale = float((p0 * q0).sum() / (p0 ** 2).sum())
    shift = TEMPLATE.mean(axis=0) - scale * rotated.mean(axis=0)
    return scale, roll, shift


def crop_square(landmarks: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The aligned square in the photo: (centre, side in photo pixels, roll in radians)."""
    scale, roll, shift = similarity(landmarks)
    c, s_ = math.cos(roll), math.sin(roll)
    centre = np.array([[c, -s_], [s_, c]]) @ ((np.full(2, ALIGNED_SIZE / 2) - shift) / scale)
    return centre, ALIGNED_SIZE / scale, roll


def _affine(landmarks: np.ndarray, out: int) -> tuple[float, ...]:
    """Pillow AFFINE coefficients (output pixel -> photo pixel) of the aligned square of side `out`."""
    scale, roll, shift = similarity(landmarks)
    k = ALIGNED_SIZE / out / scale                     # photo pixels per output pixel
    a, b = k * math.cos(roll), -k * math.sin(roll)
    d, e = k * math.sin(roll), k * math.cos(roll)
    # photo = R(roll)·(q - shift)/scale with q = u·ALIGNED_SIZE/out
    tx, ty = -shift / scale
    c, s_ = math.cos(roll), math.sin(roll)
    return (a, b, c * tx - s_ * ty, d, e, s_ * tx + c * ty)


def aligned_square(photo: Image.Image, landmarks: np.ndarray, out: int = ALIGNED_SIZE) -> Image.Image:
    """The face as Adience's aligned crops show it: an out×out RGB square, eyes level at Adience's
    place, bicubic (as Adience's warp), black where the square leaves the photo (as Adience's)."""
    coeffs = _affine(landmarks, out)
    scale = math.hypot(coeffs[0], coeffs[3])
    if scale >= 2:
        # Shrinking more than 2x: bicubic sampling alone would alias, so first box-reduce the
        # region the square covers (cheap), then warp from it.
        factor = int(scale)
        corners = [(coeffs[0] * u + coeffs[1] * v + coeffs[2], coeffs[3] * u + coeffs[4] * v + coeffs[5])
                   for u in (0, out) for v in (0, out)]
        x0, y0 = (math.floor(min(c[i] for c in corners)) for i in (0, 1))
        x1, y1 = (math.ceil(max(c[i] for c in corners)) for i in (0, 1))
        photo = photo.crop((x0, y0, x1, y1)).reduce(factor)
        a, b, c, d, e, f = coeffs
        coeffs = (a / factor, b / factor, (c - x0) / factor, d / factor, e / factor, (f - y0) / factor)
    return photo.transform((out, out), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC,
                           fillcolor=(0, 0, 0))


def align_face(photo: Image.Image, landmarks: np.ndarray, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """A face of an RGB photo -> uint8 size×size×3 BGR, aligned as Adience's faces and then resized
    by the training decoder's last step (816 -> size, Lanczos, BGR), like a preprocessed face."""
    return to_model_input(aligned_square(photo, landmarks), size)


def looks_aligned(width: int, height: int, landmarks: np.ndarray) -> bool:
    """True when a picture already is an aligned face crop: square, and the aligned square of its
    face is about the picture itself (centre, side and roll within ALIGNED_TOLERANCE)."""
    tol = ALIGNED_TOLERANCE
    centre, side, roll = crop_square(landmarks)
    picture = max(width, height)
    off = float(np.hypot(centre[0] - width / 2, centre[1] - height / 2)) / picture
    ratio = side / picture
    return bool(off <= tol["centre"] and 1 / tol["side_ratio"] <= ratio <= tol["side_ratio"]
                and abs(math.degrees(roll)) <= tol["roll_degrees"] and abs(width - height) <= tol["aspect"] * picture)
