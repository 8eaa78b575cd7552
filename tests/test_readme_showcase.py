"""What the README shows stays true: the Python API snippet runs, the pictures are there and small,
the samples have the shape the code writes, and docs/make_readme_assets.py rewrites only its blocks."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def _assets_module():
    spec = importlib.util.spec_from_file_location("make_readme_assets",
                                                  os.path.join(ROOT, "docs", "make_readme_assets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ASSETS = _assets_module()


def _generated(name: str) -> str:
    match = next(m for m in ASSETS.BLOCK.finditer(README) if m["name"] == name)
    return re.fullmatch(r"```\w*\n(.*)\n```\n", match["body"], re.S)[1]


def test_the_python_api_snippet_runs(classifier_path, records_dir, adience_root, tmp_path, monkeypatch):
    section = README.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, re.S)
    root, _ = adience_root
    photos = tmp_path / "photos"
    photos.mkdir()
    valid = os.path.join(root, "valid")
    folder = sorted(os.listdir(valid))[0]
    faces = sorted(os.listdir(os.path.join(valid, folder)))[:4]
    for name in faces:
        shutil.copy(os.path.join(valid, folder, name), photos / name)
    (photos / "not_a_face.jpg").write_bytes(b"no image here")
    os.symlink(classifier_path, tmp_path / "model.keras")
    os.symlink(records_dir, tmp_path / "records")
    monkeypatch.chdir(tmp_path)

    namespace: dict = {}
    exec(compile(snippet, "README.md: Python API", "exec"), namespace)

    rows = namespace["result"].rows
    assert len(rows) == len(faces) + 1 and sum(row.error is not None for row in rows) == 1
    scored = [row.score for row in rows if row.error is None]
    # The arrays path and the files path see the same pixels, hence the same scores.
    np.testing.assert_allclose(namespace["male_probability"], scored, atol=1e-5)
    report = namespace["report"]
    assert report["valid"]["accuracy"] >= 0.9
    assert (tmp_path / "report" / "report.json").is_file() and (tmp_path / "report" / "model_card.md").is_file()


def test_the_pictures_are_in_the_repository_and_small():
    pictures = re.findall(r"!\[[^\]]+\]\((docs/img/[^)]+\.png)\)", README)
    assert len(pictures) == len(ASSETS.PLOTS)
    for picture in pictures:
        path = os.path.join(ROOT, picture)
        assert os.path.getsize(path) < 40_000, picture
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width <= ASSETS.MAX_WIDTH


def test_the_report_sample_has_the_shape_evaluate_writes():
    from model.evaluation.evaluate import split_metrics

    sample = json.loads(_generated("report.json"))
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 20)
    real = {"model": "m.keras", "records": "r", "threshold": 0.5, "threshold_source": "default",
            "temperature": {"value": 1.0, "source": "none"}, "positive_class": "male", "tta": "none", "splits": ["valid"],
            "valid": split_metrics(labels, rng.random(40), rng.integers(0, 70, 40))}

    def shape(value):    # the keys, all the way down (values differ from run to run)
        return {k: shape(v) for k, v in value.items()} if isinstance(value, dict) else None

    regenerated = json.loads(ASSETS.report_sample(real))
    assert shape(sample) == shape(regenerated)


def test_the_classify_sample_has_the_table_columns():
    from model.inference.classify import ClassifyRow
    from model.inference.output import format_rows

    table = _generated("classify-table").splitlines()
    assert table[0].startswith("$ python cli.py classify ")
    header = format_rows([ClassifyRow(path="a.jpg", label="male", score=0.9)], "table").splitlines()[0]
    assert table[1].split() == header.split()
    assert any(" error: " in line for line in table)        # the demo's unreadable file
    assert table[-1].startswith("classified ")


def test_the_assets_script_rewrites_only_its_blocks():
    text = ("intro\n<!-- BEGIN generated: report.json (x) -->\nold\n<!-- END generated -->\nmiddle\n"
            "<!-- BEGIN generated: other (x) -->\nkept\n<!-- END generated -->\n")
    out = ASSETS.replace_blocks(text, {"report.json": '{"a": 1}'})
    assert out == text.replace("old\n", '```json\n{"a": 1}\n```\n')
    with pytest.raises(SystemExit, match="no generated block named missing"):
        ASSETS.replace_blocks(text, {"missing": "x"})
