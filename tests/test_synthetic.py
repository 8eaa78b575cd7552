"""The generated Adience tree: what the summary says is what is on disk, and the classes differ."""
from __future__ import annotations

import hashlib
import os

import numpy as np
from PIL import Image

from pipeline.decode import decode_image
from pipeline.preprocess.discover import FOLDER_PATTERN
from pipeline.schema import AGE_GROUPS
from pipeline.synthetic.tree import BAD_KINDS, SPECIAL_KINDS, make_adience_tree


def files_under(root: str) -> dict[str, bytes]:
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root).replace(os.sep, "/")] = open(path, "rb").read()
    return found


def test_summary_matches_the_files_on_disk(adience_root):
    root, summary = adience_root
    files = files_under(root)
    assert set(files) == set(summary.images) | set(summary.rejects)
    assert summary.found == len(files)
    for split in ("train", "valid"):
        in_split = [p for p in summary.images if p.startswith({"train": "aligned/", "valid": "valid/"}[split])]
        assert len(in_split) == summary.count(split) == sum(summary.by_age[split].values())
    for relpath in summary.images:
        assert FOLDER_PATTERN.match(relpath.split("/")[1])


def test_every_format_and_every_bad_kind_is_present(adience_root):
    _, summary = adience_root
    assert set(SPECIAL_KINDS) | {"jpeg", "red_png"} <= set(summary.images.values())
    assert set(BAD_KINDS) <= set(summary.rejects.values())
    assert summary.skipped_folders == ["aligned/unknown"]
    assert set(summary.by_label["train"]) == {"female", "male"} and min(summary.by_label["train"].values()) > 0


def test_ages_cover_the_groups_and_fall_between_them_too(adience_root):
    _, summary = adience_root
    ages = {int(a) for a in summary.by_age["train"]}
    inside = {a for a in ages if any(lo <= a <= hi for lo, hi in AGE_GROUPS)}
    assert len({next(g for g in AGE_GROUPS if g[0] <= a <= g[1]) for a in inside}) == len(AGE_GROUPS)
    assert ages - inside                      # at least one age between two groups


def test_formats_are_what_they_claim(adience_root):
    root, summary = adience_root
    expected_mode = {"gray_jpeg": "L", "cmyk_jpeg": "CMYK", "palette_png": "P", "rgba_png": "RGBA"}
    for relpath, kind in summary.images.items():
        with Image.open(os.path.join(root, relpath)) as im:
            assert im.format == ("PNG" if kind.endswith("png") else "JPEG"), relpath
            if kind in expected_mode:
                assert im.mode == expected_mode[kind]
            if kind == "exif_rotated_jpeg":
                assert im.getexif().get(0x0112) == 6


def test_no_two_images_are_identical_and_generation_is_reproducible(adience_root, tmp_path):
    root, summary = adience_root
    files = files_under(root)
    digests = [hashlib.sha256(files[p]).hexdigest() for p in summary.images]
    assert len(set(digests)) == len(digests)
    again = make_adience_tree(str(tmp_path / "again"), n_train=120, n_valid=40, seed=0, bad_files=True)
    assert files_under(str(tmp_path / "again")) == files
    assert again.images == summary.images and again.rejects == summary.rejects


def test_plain_tree_for_the_benchmark(tmp_path):
    summary = make_adience_tree(str(tmp_path), n_train=6, n_valid=2, image_size=80, bad_files=False, variety=False)
    assert set(summary.images.values()) == {"jpeg"} and not summary.rejects
    for relpath in summary.images:
        with Image.open(tmp_path / relpath) as im:
            assert im.size == (80, 80)


def test_the_classes_differ_visibly(adience_root):
    """A proxy for learnability: one threshold on warmth (red minus blue) and brightness separates
    the labels of nearly every image (the real check is the training test's accuracy)."""
    root, summary = adience_root
    scores, labels = [], []
    for relpath in summary.images:
        bgr = decode_image(open(os.path.join(root, relpath), "rb").read(), 64).astype(float)
        center = bgr[20:44, 20:44]
        scores.append(center[..., 2].mean() - center[..., 0].mean() + center.mean())
        labels.append(1 if relpath.split("/")[1].endswith("_M") else 0)
    scores, labels = np.array(scores), np.array(labels)
    best = max(((scores > t) == (labels == 0)).mean() for t in np.unique(scores))
    assert best >= 0.95, best


def test_shape_cue_classes_do_not_differ_by_colour():
    """The "shape" set: a picture's average colour tells its class no better than chance, unlike the
    "colour" set's, so a model must read shapes. Measured as the cross-validated accuracy of logistic
    regression on the three channel means."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from pipeline.synthetic.tree import face_image

    def colour_only_accuracy(cue: str) -> float:
        pixels = [face_image(s % 2, 64, seed=s, cue=cue).reshape(-1, 3).astype(float) for s in range(200)]
        stats = np.array([p.mean(0) for p in pixels])
        return float(cross_val_score(LogisticRegression(max_iter=1000), stats, [s % 2 for s in range(200)],
                                     cv=5).mean())

    assert colour_only_accuracy("shape") < 0.6
    assert colour_only_accuracy("colour") > 0.95
