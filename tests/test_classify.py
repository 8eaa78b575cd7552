"""`classify` on face crops (--faces aligned): folders, path lists, the one-image form, bad files as
error rows, output formats, rows streamed as they are scored with bounded look-ahead, progress,
batched == one by one, a non-classifier model refused. (Photos and face detection: test_faces.py.)"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess

import numpy as np
import pytest

from tests.conftest import CLI

FAMILIAR = re.compile(r"\A\*\*\*\*\noutput class is (female|male)\. \(sigmoid value=([-+0-9.e]+)\)\n\*\*\*\*\n\Z")


GOOD = {  # relpath -> (label drawn, kind written by pipeline.synthetic.tree)
    "a_female.jpg": (0, "jpeg"),
    "b_male.png": (1, "png"),
    "sub/c_gray.jpg": (0, "gray_jpeg"),
    "sub/d_exif_rotated.JPG": (1, "exif_rotated_jpeg"),
    "sub/deeper/e_rgba.png": (0, "rgba_png"),
}
BAD = {  # relpath -> (bad kind, words the reason must contain)
    "f_truncated.jpg": ("truncated_jpeg", "truncated"),
    "g_empty.png": ("empty", "empty"),
    "sub/h_random.jpeg": ("random_bytes", "not an image"),
    "sub/i_text_named.jpg": ("text", "not an image"),
    "j_broken.jpg": ("broken_jpeg", "corrupt"),
}


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> str:
    from pipeline.synthetic.tree import bad_file_bytes, face_image, write_image

    root = str(tmp_path_factory.mktemp("mixed"))
    for i, (rel, (label, kind)) in enumerate(GOOD.items()):
        write_image(os.path.join(root, rel), face_image(label, size=200 + 16 * i, seed=i), kind, seed=i)
    rng = np.random.default_rng(0)
    for rel, (kind, _) in BAD.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(bad_file_bytes(kind, rng))
    with open(os.path.join(root, "notes.txt"), "w") as f:       # no image extension: skipped
        f.write("not a list of paths to classify? it is, but only when named on the command line\n")
    return root


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    import cli

    # The generated faces are drawn shapes no face detector finds: these tests classify them as the
    # aligned crops they stand for (auto would treat their names as photos).
    if "--faces" not in argv:
        argv = [*argv, "--faces", "aligned"]
    status = cli.main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


# ------------------------------------------------------------------ folder with bad files
def test_mixed_folder_error_rows_for_bad_files_scores_for_the_rest_exit_1(classifier_path, mixed_folder,
                                                                          model, capsys):
    from pipeline.decode import load_image

    status, out, err = _run(["classify", "-m", classifier_path, "-i", mixed_folder, "--format", "json",
                             "-b", "2"], capsys)
    assert status == 1
    rows = {os.path.relpath(r["path"], mixed_folder): r for r in json.loads(out)}
    assert set(rows) == set(GOOD) | set(BAD)            # notes.txt skipped (reported), nothing lost
    assert "5 failed" in err and "1 files in the folders skipped" in err
    assert err.strip().splitlines()[-1].startswith(f"classified {len(GOOD)} faces in {len(GOOD)} of {len(rows)} files")
    for rel, (_, words) in BAD.items():
        assert rows[rel]["label"] is None and rows[rel]["score"] is None
        assert words in rows[rel]["error"], (rel, rows[rel]["error"])
    size = int(model.input_shape[1])
    images = np.stack([load_image(os.path.join(mixed_folder, rel), size) for rel in GOOD])
    direct = np.asarray(model(images, training=False)).reshape(-1)
    for rel, want in zip(GOOD, direct):
        row = rows[rel]
        assert row["error"] is None
        assert row["score"] == pytest.approx(float(want), abs=1e-5)
        assert row["label"] == ("male" if row["score"] > 0.5 else "female")


def test_table_and_csv_formats(classifier_path, mixed_folder, tmp_path, capsys):
    status, out, _ = _run(["classify", "-m", classifier_path, "-i", os.path.join(mixed_folder, "sub")], capsys)
    assert status == 1
    lines = out.splitlines()
    assert lines[0].split() == ["label", "score", "face", "box", "x,y,w,h", "conf", "path"]
    assert len(lines) == 1 + sum(rel.startswith("sub/") for rel in [*GOOD, *BAD])
    for line in lines[1:]:
        if "error: " in line:
            assert line.split()[:5] == ["-"] * 5
        else:
            label, score, face, box, conf, path = line.split()
            assert label in ("female", "male") and 0 <= float(score) <= 1 and (face, box, conf) == ("0", "-", "-")
            assert path.startswith(os.path.join(mixed_folder, "sub"))
    target = tmp_path / "out.csv"
    status, out, err = _run(["classify", "-m", classifier_path, "-i", mixed_folder, "--format", "csv",
                             "-o", str(target)], capsys)
    assert status == 1 and out == "" and str(target) in err
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert list(rows[0]) == ["path", "face", "x", "y", "w", "h", "confidence", "crop", "label", "score", "error",
                             "tta"]
    assert {r["tta"] for r in rows} == {"none", ""}      # scored rows say how; error rows were not scored
    assert len(rows) == len(GOOD) + len(BAD)
    assert {r["crop"] for r in rows if not r["error"]} == {"input"}
    assert {r["path"] for r in rows if r["error"]} == {os.path.join(mixed_folder, rel) for rel in BAD}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows if not r["error"])


# ------------------------------------------------------------------ path lists
def test_text_file_list_with_comments_blank_lines_folders_and_a_missing_path(classifier_path, mixed_folder,
                                                                           tmp_path, capsys):
    listing = tmp_path / "to_classify.txt"
    listing.write_text("# faces to check\n\n"
                       f"{os.path.join(mixed_folder, 'a_female.jpg')}\n"
                       f"   {os.path.join(mixed_folder, 'sub', 'deeper')}   \n"
                       "relative/missing.jpg\n"
                       f"{os.path.join(mixed_folder, 'b_male.png')}\n")
    status, out, _ = _run(["classify", "-m", classifier_path, "-i", str(listing), "--format", "json"], capsys)
    rows = json.loads(out)
    assert [os.path.basename(r["path"]) for r in rows] == ["a_female.jpg", "e_rgba.png", "missing.jpg", "b_male.png"]
    # Relative entries are relative to the list's folder.
    assert rows[2]["path"] == str(tmp_path / "relative" / "missing.jpg")
    assert rows[2]["error"] == "no such file or directory"
    assert all(r["score"] is not None for i, r in enumerate(rows) if i != 2)
    assert status == 1


def test_all_good_exit_0_and_duplicates_classified_once(classifier_path, mixed_folder, capsys):
    good = os.path.join(mixed_folder, "a_female.jpg")
    status, out, _ = _run(["classify", "-m", classifier_path, "-i", good, good,
                           os.path.join(mixed_folder, "b_male.png"), "--format", "csv"], capsys)
    assert status == 0
    assert len(out.strip().splitlines()) == 1 + 2


# ------------------------------------------------------------------ the original's one-image form
def test_single_image_prints_the_familiar_block(classifier_path, mixed_folder, model, capsys):
    from pipeline.decode import load_image

    path = os.path.join(mixed_folder, "a_female.jpg")
    status, out, _ = _run(["classify", "-m", classifier_path, "-i", path], capsys)
    assert status == 0
    match = FAMILIAR.match(out)
    assert match, out
    direct = float(np.asarray(model(load_image(path, int(model.input_shape[1]))[None], training=False))[0, 0])
    assert float(match.group(2)) == pytest.approx(direct, abs=1e-5)
    assert match.group(1) == ("male" if direct > 0.5 else "female")


def test_single_bad_image_is_one_error_line_exit_1(classifier_path, mixed_folder, capsys):
    status, out, err = _run(["classify", "-m", classifier_path, "-i",
                             os.path.join(mixed_folder, "f_truncated.jpg")], capsys)
    assert status == 1 and out == ""
    assert err.strip().splitlines() == [f"error: {os.path.join(mixed_folder, 'f_truncated.jpg')}: truncated image"]


# ------------------------------------------------------------------ library level
def test_batched_scores_equal_one_by_one(model, mixed_folder):
    from model.inference.classify import classify_files

    paths = [os.path.join(mixed_folder, rel) for rel in GOOD] * 3
    batched = classify_files(model, paths, batch_size=4, workers=2)
    single = [classify_files(model, [p], batch_size=1, workers=1)[0] for p in paths[:len(GOOD)]]
    for b, s in zip(batched, single * 3):
        assert b.path == s.path and b.label == s.label
        assert b.score == pytest.approx(s.score, abs=1e-5)


def test_inputs_reached_twice_are_classified_once(mixed_folder, tmp_path):
    """A file named twice, named and inside a folder given too, a folder and its subfolder in either
    order: each image once, in the order first reached; a second pass gives the same entries."""
    from model.inference.inputs import Inputs

    sub = os.path.join(mixed_folder, "sub")
    a = os.path.join(mixed_folder, "a_female.jpg")
    inputs = Inputs([a, sub, mixed_folder, a, os.path.join(sub, "c_gray.jpg"), sub])
    paths = [e.path for e in inputs]
    assert sorted(os.path.relpath(p, mixed_folder) for p in paths) == sorted(set(GOOD) | set(BAD))
    assert paths[0] == a and all(p.startswith(sub) for p in paths[1:1 + 5])
    assert [e.path for e in inputs] == paths and inputs.count() == len(paths)
    assert inputs.skipped == 1


def test_expand_inputs_searches_folders_case_insensitively(mixed_folder, tmp_path):
    from model.inference.classify import expand_inputs

    empty = tmp_path / "empty"
    empty.mkdir()
    got = expand_inputs([mixed_folder, str(empty)])
    files = [os.path.relpath(e.path, mixed_folder) for e in got.entries if e.error is None]
    assert sorted(files) == sorted(set(GOOD) | set(BAD))      # .JPG and .jpeg found too
    assert got.skipped == 1
    assert [e.path for e in got.entries if e.error] == [str(empty)]
    assert not got.single_image


# ------------------------------------------------------------------ bad model
def test_a_non_classifier_model_is_one_line_exit_2(tmp_path, mixed_folder):
    from model.network.vggface import SLIM_WIDTHS, build_vggface

    vgg = tmp_path / "vggface.keras"
    build_vggface(SLIM_WIDTHS).save(str(vgg))
    proc = subprocess.run([*CLI, "classify", "-m", str(vgg), "-i", mixed_folder], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(vgg) in errors[0] and "not a gender classifier" in errors[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_unwritable_output_is_one_line_exit_2(classifier_path, mixed_folder, tmp_path, capsys):
    target = tmp_path / "no_such_dir" / "out.csv"
    status, out, err = _run(["classify", "-m", classifier_path, "-i", os.path.join(mixed_folder, "a_female.jpg"),
                             "-o", str(target)], capsys)
    assert status == 2 and out == ""
    assert err.strip().splitlines() == [f"error: cannot write {target} (No such file or directory); "
                                        f"pass a writable -o path"]


# ------------------------------------------------------------------ streaming
def test_jsonl_one_object_per_line_and_json_stays_one_array(classifier_path, mixed_folder, capsys):
    status, out, _ = _run(["classify", "-m", classifier_path, "-i", mixed_folder, "--format", "jsonl"], capsys)
    assert status == 1
    lines = out.splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == len(GOOD) + len(BAD)
    assert set(rows[0]) == {"path", "face", "box", "confidence", "crop", "label", "score", "error", "tta"}
    _, out_json, _ = _run(["classify", "-m", classifier_path, "-i", mixed_folder, "--format", "json"], capsys)
    assert json.loads(out_json) == rows


def test_rows_are_written_and_flushed_as_they_are_scored_with_bounded_look_ahead(model, mixed_folder, tmp_path):
    """With batches of 2, the first rows are on disk while later files have not even been listed:
    the stream pulls at most its window of entries ahead and keeps no list of rows."""
    from model.inference.classify import ClassifyStream
    from model.inference.inputs import Entry
    from model.inference.output import RowWriter

    good = [os.path.join(mixed_folder, rel) for rel in GOOD]
    pulled = []

    def entries():
        for i in range(200):
            pulled.append(i)
            yield Entry(good[i % len(good)])

    stream = ClassifyStream(model, entries(), faces="aligned", batch_size=2, workers=2)
    target = tmp_path / "rows.jsonl"
    with open(target, "w") as out:
        writer = RowWriter(out, "jsonl")
        rows = iter(stream)
        writer.write([next(rows)])
        on_disk = target.read_text().splitlines()          # read through another handle: flushed
        assert len(on_disk) == 1 and json.loads(on_disk[0])["path"] == good[0]
        window = max(2 * 2, 2 * stream.workers)
        assert len(pulled) <= window + 2, len(pulled)     # not the 200 entries
        writer.write(rows)
        writer.close()
    assert len(target.read_text().splitlines()) == 200 and len(pulled) == 200
    assert stream.tally.files == 200 and stream.tally.faces == 200 and stream.tally.failed == 0


def test_progress_events_count_every_file_and_the_total_arrives(model, mixed_folder):
    from model.inference.classify import ClassifyStream
    from model.inference.inputs import Inputs

    events = []
    inputs = Inputs([mixed_folder])
    rows = list(ClassifyStream(model, inputs, faces="aligned", batch_size=3, progress=events.append,
                               total=inputs.count))
    from model.progress import Advanced, Ended, Started, TotalKnown

    assert isinstance(events[0], Started) and isinstance(events[-1], Ended)
    advanced = [e for e in events if isinstance(e, Advanced)]
    assert sum(e.count for e in advanced) == len(rows) == len(GOOD) + len(BAD)
    assert advanced[-1].faces == len(GOOD)
    assert all(e.total == len(rows) for e in events if isinstance(e, TotalKnown))


def test_json_array_is_valid_whatever_the_number_of_rows():
    from model.inference.classify import ClassifyRow
    from model.inference.output import format_rows

    assert json.loads(format_rows([], "json")) == []
    rows = [ClassifyRow(path="a.jpg", face=0, crop="input", label="male", score=0.75),
            ClassifyRow(path="b.jpg", error="truncated image")]
    assert [r["path"] for r in json.loads(format_rows(rows, "json"))] == ["a.jpg", "b.jpg"]
    assert [json.loads(line)["error"] for line in format_rows(rows, "jsonl").splitlines()] == [None, "truncated image"]


def test_ctrl_c_keeps_the_rows_written_valid_json_and_says_so(classifier_path, mixed_folder, tmp_path, capsys,
                                                              monkeypatch):
    import cli

    from model.progress import Advanced

    class InterruptingProgress:
        def __init__(self):
            self.done = 0

        def __call__(self, event) -> None:
            if isinstance(event, Advanced):
                self.done += 1
                if self.done == 4:
                    raise KeyboardInterrupt

    monkeypatch.setattr(cli, "ScoringBars", InterruptingProgress)
    target = tmp_path / "rows.json"
    status, out, err = _run(["classify", "-m", classifier_path, "-i", mixed_folder, "--format", "json", "-b", "1",
                             "-o", str(target)], capsys)
    assert status == 130
    rows = json.loads(target.read_text())           # the array was closed
    assert len(rows) == 4                            # the files finished before the interrupt
    lines = err.strip().splitlines()                 # counts = what was written
    assert lines[-2].startswith(f"classified {sum(r['score'] is not None for r in rows)} faces in ")
    assert " of 4 files" in lines[-2]
    assert lines[-1].startswith("interrupted: the rows written are complete")
