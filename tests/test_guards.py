"""Nothing lost, nothing unbounded (issue 19): classify's and serving's findings, each tried the way
a user meets it. Refusals are one `error:` line, exit 2, no traceback, and the files around them
are compared by digest before and after. Memory bounds are measured in a subprocess under an
address-space limit (resource.setrlimit), so a regression fails the test instead of the machine.

Everything runs on an untrained slim classifier at 32 px (scores are beside the point here) and
calls `cli.main` in this process, except where a separate process is the point.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.test_safety import digests, main, refused

SIZE = 32


@pytest.fixture(scope="module")
def small_model(slim_t7, tmp_path_factory) -> str:
    """An untrained slim classifier at SIZE."""
    from model.network.backbone import load_backbone
    from model.network.head import build_classifier

    path = str(tmp_path_factory.mktemp("guards_model") / "small.keras")
    build_classifier(load_backbone(slim_t7, image_size=SIZE), freeze_through="none").save(path)
    return path


def face_file(path, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    return str(path)


# ----------------------------------------------------------------------------- 2, 3. paths in list files
def test_output_naming_an_image_listed_in_a_path_list_is_refused(small_model, tmp_path):
    image = face_file(tmp_path / "x.png")
    listing = tmp_path / "list.txt"
    listing.write_text("x.png\n")
    before = digests(tmp_path)
    refused(main("classify", "-m", small_model, "-i", listing, "--faces", "aligned", "-o", image),
            "-o", "listed in", "it would be overwritten")
    assert digests(tmp_path) == before


def test_annotated_picture_landing_on_a_listed_input_is_refused(small_model, tmp_path, monkeypatch):
    # Run in d/ with the list beside it: --annotate . mirrors d/x.png to ./x.png, the input itself.
    (tmp_path / "d").mkdir()
    face_file(tmp_path / "d" / "x.png")
    (tmp_path / "list.txt").write_text("d/x.png\n")
    monkeypatch.chdir(tmp_path / "d")
    before = digests(tmp_path)
    refused(main("classify", "-m", small_model, "-i", "../list.txt", "--faces", "aligned", "--annotate", "."),
            "--annotate", "listed in", "inside the output folder")
    assert digests(tmp_path) == before


# ----------------------------------------------------------------------------- 4. hard links
def test_a_hard_link_to_the_model_or_an_input_is_that_file(small_model, slim_t7, tmp_path):
    model = tmp_path / "m.keras"
    shutil.copy(small_model, model)
    image = face_file(tmp_path / "x.png")
    os.link(model, tmp_path / "rows.csv")
    os.link(image, tmp_path / "rows2.csv")
    before = digests(tmp_path)
    refused(main("classify", "-m", model, "-i", image, "--faces", "aligned", "-o", tmp_path / "rows.csv"),
            "-o", "is the input -m")
    refused(main("classify", "-m", model, "-i", image, "--faces", "aligned", "-o", tmp_path / "rows2.csv"),
            "-o", "is the input -i")
    assert digests(tmp_path) == before
    # The one shared check: every command benefits (convert's -o a hard link to its weights).
    weights = tmp_path / "w.t7"
    shutil.copy(slim_t7, weights)
    os.link(weights, tmp_path / "out.keras")
    before = digests(tmp_path)
    refused(main("convert", "-w", weights, "-o", tmp_path / "out.keras"), "is the input -w")
    assert digests(tmp_path) == before
