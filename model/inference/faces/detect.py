"""Finding faces, with five landmarks each, in photos: the `mtcnn` package's MTCNN.

Why this detector: its weights ship inside its wheel (this project downloads nothing at run time;
the retina-face and deepface packages download theirs on first use, OpenCV's YuNet needs a model
file fetched separately), it runs on TensorFlow, which classify already loads (no second
framework), and it gives the five landmarks alignment needs: both eyes, the nose tip and the
mouth corners. Measured here (2 CPU cores): it loads in about 0.3 s and searches a 512×600 photo
in about 0.2 s; the time grows with the photo's area over the square of the smallest face
searched for.

Bounded memory, whatever the photo and `min_face` (issue 19: a 3072×3600 photo searched down to
1-px faces took 24 GB, a blank 9000×9000 PNG 12 GB). Two things grow without bound in MTCNN:
its image pyramid (the photo's area over the square of the smallest face) and its non-maximum
suppression, which builds several N×N float64 matrices of the N candidate boxes (12,276
candidates on a 2048-px tiling of grace_hopper.jpg asked for 1.1 GiB per matrix). So:
- the detector sees the photo shrunk to at most MAX_DETECT_SIDE px on its longer side (boxes and
  landmarks are mapped back to the photo's pixels; alignment crops from the full photo), and the
  smallest face searched is then never below the 12-px window at that resolution: in a photo of
  longer side L > MAX_DETECT_SIDE, faces under 12·L/MAX_DETECT_SIDE px are not found (53 px at
  L = 9000; with the default --min-face every face kept is still found up to L ≈ 6800);
- every suppression keeps at most MAX_CANDIDATES boxes (the most confident ones) before it
  compares them pairwise;
- one photo is searched at a time (TensorFlow already spreads one search over the cores).
Measured with the whole `classify` command: 1.5 GB resident at most for grace_hopper.jpg tiled
6×6 at --min-face 1, 1.9 GB for a blank 9000×9000 PNG (the 243 MB photo decoded included), of
which about 0.9 GB is TensorFlow, the model and the detector loaded; tests/test_guards.py runs a
search under an address-space limit.

`mtcnn` (and the three small Keras networks it builds) is imported only when the first photo is
searched, so `classify --faces aligned` and every other command never pay for it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

# Faces whose detector box is smaller than this on its shorter side are skipped (and counted):
# a crop of a 40-px face is already upscaled about 2x to reach the model's 224 px.
DEFAULT_MIN_FACE = 40
# The detector's confidence (its last network's, 0..1) below which a candidate is not a face
# (classify --min-confidence). MTCNN's own cut is 0.8, and at 0.8 scikit-learn's china.jpg (a
# temple) gave a "face" of 0.803. Measured on real photos (FaceDetector at --min-face 40 and 1):
# - faces: matplotlib's grace_hopper.jpg (as is, mirrored, turned 20°, halved) 0.982-0.9998,
#   scikit-image's astronaut.png (as is, halved, turned -15°) 0.997-1.0, its camera.png 0.998;
#   the lowest of the 16, 0.9815;
# - no face: scikit-learn's china.jpg and flower.jpg, matplotlib's logo2.png and
#   Minduka_Present_Blue_Pack.png, and the 24 other pictures of scikit-image's data (a cat, coffee,
#   a rocket, two motorcycles, textures, text, microscopy...): two candidates in all, china.jpg
#   0.803 (--min-face 40) and motorcycle_right.png 0.820 (--min-face 1).
# 0.95 lies between the two groups with a margin on both sides.
DEFAULT_MIN_CONFIDENCE = 0.95
# MTCNN's first network looks at 12-px windows: it finds nothing smaller.
DETECTOR_WINDOW = 12
# The longest side the detector works at (see the module docstring): a 2048-px pyramid searched
# down to the 12-px window peaked at about 0.85 GB above the loaded detector (blank picture).
MAX_DETECT_SIDE = 2048
# The most candidate boxes one non-maximum suppression compares pairwise (its N×N float64
# matrices: 2,000² × 8 bytes = 32 MB each). A photo with a few dozen faces has far fewer.
MAX_CANDIDATES = 2000


@dataclass(frozen=True)
class Face:
    """One detected face: box (x, y, w, h) and landmarks (5×2: the eye on the image's left, the
    other eye, nose tip, left and right mouth corners) in the photo's pixels, and confidence (0..1)."""

    box: tuple[float, float, float, float]
    confidence: float
    landmarks: np.ndarray

    @property
    def size(self) -> float:
        """The shorter side of the box, what --min-face compares."""
        return min(self.box[2], self.box[3])


def search_floor(min_face: int) -> int:
    """The smallest face size the detector looks for: half the minimum kept (so that faces a bit
    smaller are still found and counted as skipped), never below the detector's window."""
    return max(DETECTOR_WINDOW, min_face // 2)


def working_scale(width: int, height: int) -> float:
    """Detector pixels per photo pixel: the photo shrunk to at most MAX_DETECT_SIDE on its longer side."""
    return min(1.0, MAX_DETECT_SIDE / max(width, height, 1))


def _capped(nms):
    """mtcnn's non-maximum suppression, given at most MAX_CANDIDATES boxes per image: the most
    confident, in their original order (its result depends on the order)."""
    def capped(bboxes, threshold, column_image_id=0, columns_bbox=slice(1, 5, None), column_confidence=5, **kwargs):
        bboxes = np.asarray(bboxes)
        if len(bboxes) > MAX_CANDIDATES:
            keep = []
            for image in np.unique(bboxes[:, column_image_id]):
                rows = np.flatnonzero(bboxes[:, column_image_id] == image)
                if len(rows) > MAX_CANDIDATES:
                    best = np.argsort(-bboxes[rows, column_confidence], kind="stable")[:MAX_CANDIDATES]
                    rows = np.sort(rows[best])
                keep.append(rows)
            bboxes = bboxes[np.sort(np.concatenate(keep))]
        return nms(bboxes, threshold, column_image_id=column_image_id, columns_bbox=columns_bbox,
                   column_confidence=column_confidence, **kwargs)

    capped.capped = True
    return capped


def _cap_suppressions() -> None:
    from mtcnn.stages import stage_onet, stage_pnet, stage_rnet

    for stage in (stage_pnet, stage_rnet, stage_onet):
        if not getattr(stage.smart_nms_from_bboxes, "capped", False):
            stage.smart_nms_from_bboxes = _capped(stage.smart_nms_from_bboxes)


class FaceDetector:
    """Thread-safe face finder over RGB photos; the network is loaded at first use, and one photo
    is searched at a time (memory: see the module docstring)."""

    def __init__(self, min_face: int = DEFAULT_MIN_FACE, min_confidence: float = DEFAULT_MIN_CONFIDENCE):
        self.floor = search_floor(min_face)
        self.min_confidence = min_confidence
        self._mtcnn = None
        self._lock = threading.Lock()
        self._searching = threading.Lock()

    def _network(self):
        with self._lock:
            if self._mtcnn is None:
                import tensorflow as tf
                from mtcnn import MTCNN

                device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
                _cap_suppressions()
                self._mtcnn = MTCNN(device=device)
            return self._mtcnn

    @property
    def loaded(self) -> bool:
        return self._mtcnn is not None

    def detect(self, photo) -> list[Face]:
        """Every face found in an RGB photo (a Pillow image, or an H×W×3 uint8 array), left to
        right (then top to bottom), in the photo's pixels."""
        from PIL import Image

        if isinstance(photo, Image.Image):
            width, height = photo.size
            if photo.mode != "RGB":
                return []
        else:
            if photo.ndim != 3 or photo.shape[2] != 3:
                return []
            height, width = photo.shape[:2]
        scale = working_scale(width, height)
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            if not isinstance(photo, Image.Image):
                photo = Image.fromarray(photo)
            photo = photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            scale_x, scale_y = size[0] / width, size[1] / height
        else:
            scale_x = scale_y = 1.0
        rgb = np.asarray(photo)
        if min(rgb.shape[:2]) < DETECTOR_WINDOW:
            return []
        floor = max(DETECTOR_WINDOW, round(self.floor * scale))
        network = self._network()
        with self._searching:
            # "numpy" output keeps sub-pixel landmarks (the "json" one rounds them to integers):
            # rows [image, x1, y1, w, h, confidence, x of the 5 landmarks, y of the 5 landmarks].
            found = network.detect_faces(rgb, output_type="numpy", min_face_size=floor,
                                         threshold_onet=self.min_confidence)
        back = np.array([scale_x, scale_y, scale_x, scale_y])
        faces = [Face(box=tuple(float(v) for v in np.asarray(row[1:5], np.float64) / back), confidence=float(row[5]),
                      landmarks=np.stack([row[6:11] / scale_x, row[11:16] / scale_y], axis=1).astype(np.float64))
                 for row in np.asarray(found).reshape(-1, 16)]
        return sorted(faces, key=lambda f: (f.box[0], f.box[1]))
