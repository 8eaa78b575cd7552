"""Finding faces, with five landmarks each, in photos: the `mtcnn` package's MTCNN.

Why this detector: its weights ship inside its wheel (this project downloads nothing at run time;
the retina-face and deepface packages download theirs on first use, OpenCV's YuNet needs a model
file fetched separately), it runs on TensorFlow, which classify already loads (no second
framework), and it gives the five landmarks alignment needs: both eyes, the nose tip and the
mouth corners. Measured here (2 CPU cores): it loads in about 0.3 s and searches a 512×600 photo
in about 0.2 s; the time grows with the photo's area over the square of the smallest face
searched for (a 4000×4700 photo takes about 9 s with the default --min-face).

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
# MTCNN's first network looks at 12-px windows: it finds nothing smaller.
DETECTOR_WINDOW = 12


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


class FaceDetector:
    """Thread-safe face finder over RGB uint8 arrays; the network is loaded at first use."""

    def __init__(self, min_face: int = DEFAULT_MIN_FACE):
        self.floor = search_floor(min_face)
        self._mtcnn = None
        self._lock = threading.Lock()

    def _network(self):
        with self._lock:
            if self._mtcnn is None:
                import tensorflow as tf
                from mtcnn import MTCNN

                device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
                self._mtcnn = MTCNN(device=device)
            return self._mtcnn

    @property
    def loaded(self) -> bool:
        return self._mtcnn is not None

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Every face found in an H×W×3 RGB uint8 photo, left to right (then top to bottom)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < DETECTOR_WINDOW:
            return []
        # "numpy" output keeps sub-pixel landmarks (the "json" one rounds them to integers):
        # rows [image, x1, y1, w, h, confidence, x of the 5 landmarks, y of the 5 landmarks].
        found = self._network().detect_faces(rgb, output_type="numpy", min_face_size=self.floor)
        faces = [Face(box=tuple(float(v) for v in row[1:5]), confidence=float(row[5]),
                      landmarks=np.stack([row[6:11], row[11:16]], axis=1).astype(np.float64))
                 for row in np.asarray(found).reshape(-1, 16)]
        return sorted(faces, key=lambda f: (f.box[0], f.box[1]))
