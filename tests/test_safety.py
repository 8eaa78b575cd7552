"""Nothing lost, nothing silently wrong (issue 11): each finding tried again the way a user would,
through the commands in a subprocess. Every refusal is asserted to be exit status 2 with one
`error:` line and no traceback, and the files around it (inputs, neighbouring folders) are
compared by digest before and after, so a refusal that still destroyed something fails.

Each finding runs at least once as a real subprocess; its further variants call `cli.main` in this
process (the same code from argv on, without paying TensorFlow's start-up again), which keeps the
file within a minute or two.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.schema import MANIFEST_NAME, REJECTS_NAME

from .conftest import CLI, IN_MEMORY, ROOT
from .conftest import SMALL_SIZE as SIZE
TIMEOUT = 300      # a hang (FIFO) fails the test instead of blocking the suite


# ----------------------------------------------------------------------------- helpers
def run(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def main(*args) -> subprocess.CompletedProcess:
    """cli.main in this process, its stdout/stderr captured: a stand-in for `run` in variants."""
    import contextlib
    import io

    import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def refused(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert exit 2 with exactly one line, `error: ...`, holding every fragment; return it."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def digests(*paths) -> dict[str, str]:
    """path -> sha256 of every file below the paths (symbolic links: their target text)."""
    out = {}
    for top in map(str, paths):
        if not os.path.lexists(top):
            out[top] = "absent"
            continue
        walk = [(os.path.dirname(top), [], [os.path.basename(top)])] if not os.path.isdir(top) else os.walk(top)
        for dirpath, dirnames, names in walk:
            for name in sorted(names) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    out[path] = "link:" + os.readlink(path)
                elif stat.S_ISREG(mode):
                    with open(path, "rb") as f:
                        out[path] = hashlib.sha256(f.read()).hexdigest()
                else:
                    out[path] = f"mode:{stat.S_IFMT(mode)}"
            if os.path.isdir(top):
                out[dirpath] = "dir:" + ",".join(sorted(os.listdir(dirpath)))
    return out


def rejects_of(out) -> dict[str, str]:
    with open(os.path.join(out, REJECTS_NAME)) as f:
        return {r["path"]: r["reason"] for r in map(json.loads, f)}


def manifest_of(out) -> dict:
    with open(os.path.join(out, MANIFEST_NAME)) as f:
        return json.load(f)


def preprocess(root, out, *extra) -> subprocess.CompletedProcess:
    return run("preprocess", "-i", root, "-o", out, "--image-size", SIZE, "--train-shards", 2,
               "--valid-shards", 2, *IN_MEMORY, *extra)


def an_image(root: str) -> str:
    folder = os.path.join(root, "valid", sorted(os.listdir(os.path.join(root, "valid")))[0])
    return os.path.join(folder, sorted(os.listdir(folder))[0])


# ----------------------------------------------------------------------------- 1. no glob semantics
def test_glob_characters_in_output_are_a_name_and_leave_the_sibling_alone(tiny_root, tiny_records, tmp_path):
    parent = tmp_path / "dir"
    parent.mkdir()
    sibling = parent / "rec_old"
    shutil.copytree(tiny_records, sibling)
    before = digests(sibling, tiny_root)
    out = parent / "rec*"
    proc = preprocess(tiny_root, out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert digests(sibling, tiny_root) == before                  # the sibling's records are intact
    assert manifest_of(out)["written"] == 18                       # a folder literally named rec*
    # Rerun with --overwrite: it replaces only its own files (found by listing, not by pattern).
    proc = preprocess(tiny_root, out, "--overwrite")
    assert proc.returncode == 0 and "replaced" in proc.stdout, proc.stderr
    assert digests(sibling, tiny_root) == before
    assert sorted(os.listdir(parent)) == ["rec*", "rec_old"]


def test_brackets_in_input_and_output_work_as_names(tiny_root, tmp_path):
    root = tmp_path / "ad[1]"
    shutil.copytree(tiny_root, root)
    out = tmp_path / "out[1]?"
    proc = preprocess(root, out)
    assert proc.returncode == 0, proc.stderr
    manifest = manifest_of(out)
    assert (manifest["found"], manifest["written"], manifest["rejected"]) == (18, 18, 0)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


# ----------------------------------------------------------------------------- 2, 11, 12. outputs vs inputs
def test_classify_output_naming_the_model_or_an_input_image_is_refused(small_model, tiny_root, tmp_path):
    model = tmp_path / "m.keras"
    shutil.copy(small_model, model)
    image = an_image(tiny_root)
    before = digests(model, tiny_root)
    refused(run("classify", "-m", model, "-i", image, "-o", model), "-o", "is the input -m")
    refused(main("classify", "-m", model, "-i", image, os.path.dirname(image), "-o", image), "is the input -i")
    # through a symbolic link to the model: compared after resolving links
    link = tmp_path / "rows.csv"
    link.symlink_to(model)
    refused(main("classify", "-m", model, "-i", image, "-o", link), "is the input -m")
    assert digests(model, tiny_root) == before


def test_train_and_convert_refuse_to_overwrite_their_weights_before_any_work(slim_t7, tiny_records, tmp_path):
    weights = tmp_path / "backbone.keras"
    assert main("convert", "-w", slim_t7, "-o", weights).returncode == 0
    before = digests(weights, tiny_records, slim_t7)
    refused(run("train", "-w", weights, "-i", tiny_records, "-o", weights), "-o", "is the input -w")
    refused(main("convert", "-w", slim_t7, "-o", slim_t7), "is the input -w")
    refused(main("train", "-w", weights, "-i", tiny_records, "-o", os.path.join(tiny_records, "m.keras")),
            "inside the input folder -i")
    assert digests(weights, tiny_records, slim_t7) == before
    assert sorted(os.listdir(tmp_path)) == ["backbone.keras"]      # no logs, checkpoints or model made


def test_preprocess_output_inside_the_input_tree_and_input_inside_output_are_refused(tiny_root, tmp_path):
    root = tmp_path / "adience"
    shutil.copytree(tiny_root, root)
    before = digests(root)
    refused(preprocess(root, root / "aligned" / "records"), "-o", "inside the input folder -i")
    refused(main("preprocess", "-i", root / "aligned", "-o", root, *IN_MEMORY), "input -i",
            "inside the output folder -o")
    assert digests(root) == before


def test_evaluate_report_inside_the_records_is_refused(small_model, records):
    before = digests(records, small_model)
    refused(main("evaluate", "-m", small_model, "-i", records, "--report-dir", os.path.join(records, "report")),
            "--report-dir", "inside the input folder -i")
    assert digests(records, small_model) == before


# ----------------------------------------------------------------------------- 8, 12. unwritable outputs found first
def test_outputs_under_a_regular_file_or_a_directory_where_a_file_goes(slim_t7, small_model, tiny_root,
                                                                       tiny_records, tmp_path):
    blocker = tmp_path / "plain.txt"
    blocker.write_text("not a folder")
    folder_model = tmp_path / "x.keras"
    folder_model.mkdir()
    before = digests(tmp_path, tiny_records)
    refused(run("train", "-w", slim_t7, "-i", tiny_records, "-o", folder_model),
            "-o", "is an existing directory")
    refused(main("train", "-w", slim_t7, "-i", tiny_records, "-o", tmp_path / "m.keras", "--checkpoint-dir",
                 blocker / "ckpt"), "--checkpoint-dir", "is a file, not a folder")
    refused(main("train", "-w", slim_t7, "-i", tiny_records, "-o", blocker / "m.keras"), "is a file, not a folder")
    refused(main("convert", "-w", slim_t7, "-o", folder_model), "is an existing directory")
    refused(main("preprocess", "-i", tiny_root, "-o", blocker / "records"), "is a file, not a folder")
    refused(main("evaluate", "-m", small_model, "-i", tiny_records, "--report-dir", blocker), "is an existing file")
    assert digests(tmp_path, tiny_records) == before


def test_train_output_check_runs_in_check_config(slim_t7, tiny_records, tmp_path):
    from model.training.config import TrainConfig, check_config as _check_config
    from pipeline.errors import DataError

    config = TrainConfig(weights=slim_t7, records=tiny_records, output=str(tmp_path / "m.keras"),
                         log_dir=tiny_records)
    with pytest.raises(DataError, match="`log_dir` .* is the input `records`"):
        _check_config(config)
    _check_config(TrainConfig(weights=slim_t7, records=tiny_records, output=str(tmp_path / "m.keras")))


# ----------------------------------------------------------------------------- 3. records are a contract
def _rewrite_manifest(records: str, edit) -> None:
    body = manifest_of(records)
    edit(body)
    with open(os.path.join(records, MANIFEST_NAME), "w") as f:
        json.dump(body, f)


@pytest.mark.parametrize("bad", ["../../../etc/passwd", "/etc/passwd", "sub/train-00000-of-00002.tfrecord", ".."])
def test_shard_names_that_leave_the_records_folder_are_refused(records, bad):
    from pipeline.errors import DataError
    from pipeline.manifest import load_manifest

    _rewrite_manifest(records, lambda body: body["splits"]["train"]["shards"].__setitem__(0, bad))
    with pytest.raises(DataError, match="not a plain file name"):
        load_manifest(records)


def test_train_and_evaluate_refuse_a_shard_pointing_into_another_records_folder(small_model, slim_t7, records,
                                                                                tiny_records, tmp_path):
    foreign = os.path.relpath(os.path.join(tiny_records, "train-00000-of-00002.tfrecord"), records)
    _rewrite_manifest(records, lambda body: body["splits"]["train"]["shards"].__setitem__(0, foreign))
    before = digests(records, tiny_records)
    refused(run("train", "-w", slim_t7, "-i", records, "-o", tmp_path / "m.keras"), "not a plain file name")
    refused(main("evaluate", "-m", small_model, "-i", records, "--split", "train", "--report-dir",
                 tmp_path / "report"), "not a plain file name")
    assert digests(records, tiny_records) == before
    assert not os.path.exists(tmp_path / "report")


def _cut_at_record(path: str, keep: int) -> None:
    """Keep the first `keep` records of a TFRecord file (cut exactly at a record boundary)."""
    with open(path, "rb") as f:
        data = f.read()
    end = 0
    for _ in range(keep):
        (length,) = np.frombuffer(data[end:end + 8], "<u8")
        end += 8 + 4 + int(length) + 4
    with open(path, "wb") as f:
        f.write(data[:end])


def test_evaluate_names_a_shard_cut_at_a_record_boundary(small_model, records, tmp_path):
    shard = os.path.join(records, manifest_of(records)["splits"]["valid"]["shards"][0])
    _cut_at_record(shard, 1)
    refused(run("evaluate", "-m", small_model, "-i", records, "--report-dir", tmp_path / "r"),
            shard, "the manifest says", "preprocess -i", "--overwrite")
    assert not os.path.exists(tmp_path / "r")


def test_evaluate_names_a_corrupt_shard(small_model, records, tmp_path):
    shard = os.path.join(records, manifest_of(records)["splits"]["valid"]["shards"][1])
    with open(shard, "r+b") as f:
        f.seek(os.path.getsize(shard) // 2)
        f.write(b"\xff" * 64)          # inside a record: its CRC no longer matches
    refused(main("evaluate", "-m", small_model, "-i", records, "--report-dir", tmp_path / "r"),
            shard, "corrupt", "--overwrite")


def _short_first_shard(records: str) -> str:
    shard = os.path.join(records, manifest_of(records)["splits"]["train"]["shards"][0])
    _cut_at_record(shard, 1)
    return shard


@pytest.mark.parametrize("case", ["drop_remainder+skip", "two_pipelines_files", "four_pipelines_records",
                                  "high_memory", "legacy_manifest"])
def test_reader_refuses_a_short_shard_whatever_consumes_it(records, case):
    """Training reads with drop_remainder, skip (resume), several input pipelines (file or record
    sharding) and the RAM cache: the count check must hold in each."""
    import tensorflow as tf

    from pipeline.reader import clear_memory_cache, make_dataset
    from pipeline.shard_check import records_error

    shard = _short_first_shard(records)
    kwargs = {"drop_remainder+skip": dict(drop_remainder=True, skip=3, shuffle=True),
              "two_pipelines_files": dict(input_context=tf.distribute.InputContext(2, 0, 2)),
              "four_pipelines_records": dict(input_context=tf.distribute.InputContext(4, 3, 4)),
              "high_memory": dict(memory="high", shuffle=True, drop_remainder=True),
              "legacy_manifest": {}}[case]
    if case == "legacy_manifest":      # written before shard_counts: the split total is checked instead
        _rewrite_manifest(records, lambda body: [s.pop("shard_counts") for s in body["splits"].values()])
    try:
        with pytest.raises(tf.errors.OpError) as caught:
            for _ in make_dataset(records, "train", 2, **kwargs):
                pass
    finally:
        clear_memory_cache()
    problem = str(records_error(caught.value, records, "train"))
    # Per-shard counts name the shard and its count; without them the shard's sha256 still names it.
    assert shard in problem and "--overwrite" in problem
    assert ("sha256 differs from the manifest's" if case == "legacy_manifest" else "the manifest says") in problem


def test_reader_reads_intact_records_in_every_mode(tiny_records):
    import tensorflow as tf

    from pipeline.reader import clear_memory_cache, make_dataset
    from pipeline.shard_check import find_corrupt_shard

    counts = {}
    for name, kwargs in {"one": {}, "files": dict(input_context=tf.distribute.InputContext(2, 1, 2)),
                         "high": dict(memory="high", skip=2)}.items():
        counts[name] = sum(int(b[1].shape[0]) for b in make_dataset(tiny_records, "train", 5, **kwargs))
    clear_memory_cache()
    assert counts["one"] == 12 and counts["high"] == 10 and 0 < counts["files"] < 12
    assert find_corrupt_shard(tiny_records, ["train", "valid"]) is None


def test_manifest_digest_tells_other_records_apart(tiny_records, records):
    from pipeline.manifest import manifest_digest

    same = manifest_digest(records, ["train"])
    assert same == manifest_digest(tiny_records, ["train"])      # an identical copy: the same records
    assert same != manifest_digest(records, ["valid"])
    shard = os.path.join(records, manifest_of(records)["splits"]["train"]["shards"][0])
    with open(shard, "ab") as f:
        f.write(b"\0")
    from pipeline.errors import DataError

    # The digest is the manifest's hashes; a shard whose bytes are not those is refused outright.
    with pytest.raises(DataError, match="sha256 differs from the manifest's"):
        manifest_digest(records, ["train"])


# ----------------------------------------------------------------------------- 4. bounded t7 reads
def _crafted_t7(path: str, huge: int) -> None:
    """A slim VGG_FACE structure whose conv1_1 and conv1_2 claim `huge` output channels through
    zero strides over tiny storages: the 22 KB file that asked for 144 GiB."""
    from model.network import t7_writer as w
    from model.network.vggface import SLIM_WIDTHS

    class Repeated(w.T7Tensor):
        def __init__(self, shape, value):
            super().__init__(np.full(1, value, np.float32), "torch.FloatTensor")
            self.shape = shape

    class CraftingWriter(w.T7Writer):
        def _tensor(self, obj, values, class_name):
            if not isinstance(obj, Repeated):
                return super()._tensor(obj, values, class_name)
            if self._torch_header(obj, class_name):
                return
            self._int(len(obj.shape))
            for n in obj.shape:
                self._long(n)
            for _ in obj.shape:
                self._long(0)                       # zero strides: one value stands for all
            self._long(1)
            self._storage(w.T7Storage(values), values)

    modules = w.vggface_modules(w.random_vggface_weights(SLIM_WIDTHS, seed=0))
    modules[0].fields.update(weight=Repeated((huge, 27), 0.01), bias=Repeated((huge,), 0.0), nOutputPlane=huge)
    modules[2].fields.update(weight=Repeated((SLIM_WIDTHS.conv[1], huge * 9), 0.01), nInputPlane=huge)
    with open(path, "wb") as f:
        CraftingWriter(f).write(w.sequential(modules))


def test_crafted_t7_with_zero_strides_is_refused_before_allocating(tmp_path):
    from model.errors import ModelError
    from model.network.t7 import read_vggface_t7

    path = str(tmp_path / "crafted.t7")
    _crafted_t7(path, 2**30)
    assert os.path.getsize(path) < 2**20          # and it claims 2**30 x 27 floats: 108 GiB
    with pytest.raises(ModelError, match="zero stride"):
        read_vggface_t7(path)
    out = tmp_path / "out.keras"
    refused(main("convert", "-w", path, "-o", out), "zero stride")
    assert not out.exists()


def test_t7_sizes_beyond_vggface_are_refused(tmp_path):
    from model.network import t7_writer as w
    from model.errors import ModelError
    from model.network.t7 import MAX_CONV_WIDTH, read_vggface_t7
    from model.network.vggface import SLIM_WIDTHS

    modules = w.vggface_modules(w.random_vggface_weights(SLIM_WIDTHS, seed=0))
    wide = MAX_CONV_WIDTH + 1
    modules[0] = w.conv_module(np.zeros((wide, 27), np.float32), np.zeros(wide, np.float32))
    path = str(tmp_path / "wide.t7")
    w.write_t7(path, w.sequential(modules))
    with pytest.raises(ModelError, match=f"{wide} units wide"):
        read_vggface_t7(path)


# ----------------------------------------------------------------------------- 5. numbers checked
def test_float_flags_must_be_finite_and_in_range(slim_t7, tiny_records, tmp_path):
    proc = run("train", "-w", slim_t7, "-i", tiny_records, "-o", tmp_path / "m.keras", "--learning-rate", "inf")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --learning-rate: must be a finite number in (0, inf), got inf" in proc.stderr.splitlines()[-1]
    assert not os.listdir(tmp_path)
    import cli

    parser = cli.build_parser()
    base = ["train", "-w", "w.t7", "-i", "r", "-o", "m.keras"]
    for flag, value in (("--learning-rate", "nan"), ("--learning-rate", "0"), ("--learning-rate", "-1e-3"),
                        ("--dropout", "1"), ("--dropout", "nan"), ("--dropout", "-inf")):
        with pytest.raises(SystemExit) as caught:
            parser.parse_args([*base, flag, value])
        assert caught.value.code == 2
    assert parser.parse_args([*base, "--learning-rate", "1e-4", "--dropout", "0"]).learning_rate == 1e-4


def test_train_config_refuses_non_finite_numbers(slim_t7, tiny_records, tmp_path):
    from model.errors import ModelError
    from model.training.config import TrainConfig, check_config as _check_config

    for field, value in (("learning_rate", float("inf")), ("learning_rate", float("nan")),
                         ("dropout", float("nan"))):
        config = TrainConfig(weights=slim_t7, records=tiny_records, output=str(tmp_path / "m.keras"),
                             **{field: value})
        with pytest.raises(ModelError, match="finite"):
            _check_config(config)


def test_a_model_with_nan_weights_is_refused_by_classify_and_evaluate(small_model, tiny_root, tiny_records,
                                                                      tmp_path):
    import keras

    from model.network.head import OUTPUT_LAYER

    model = keras.models.load_model(small_model, safe_mode=True, compile=False)
    layer = model.get_layer(OUTPUT_LAYER)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, np.full_like(bias, np.nan)])
    broken = tmp_path / "nan.keras"
    model.save(broken)
    refused(run("classify", "-m", broken, "-i", an_image(tiny_root)), "non-finite weight", "retrain")
    refused(main("evaluate", "-m", broken, "-i", tiny_records, "--report-dir", tmp_path / "r"), "non-finite")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- 7. stale temp folders
def test_a_killed_runs_temp_folder_is_removed_and_a_live_one_left_alone(tiny_root, tiny_records, tmp_path):
    out = tmp_path / "records"
    shutil.copytree(tiny_records, out)
    dead = out / ".tmp-0123456789ab"          # what a SIGKILLed run leaves: its lock is free
    (dead / "summaries").mkdir(parents=True)
    (dead / "lock").write_text("")
    (dead / "train-00000-of-00002.tfrecord").write_bytes(b"x" * 300_000)
    live = out / ".tmp-live00000000"
    live.mkdir()
    with open(live / "lock", "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)     # a run still going holds its lock
        proc = preprocess(tiny_root, out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert not dead.exists() and live.exists()
    assert "removed 1 temp folder(s) that killed runs left" in proc.stdout and ".tmp-0123456789ab" in proc.stdout
    assert ".tmp-live00000000 alone" in proc.stdout
    assert manifest_of(out)["written"] == 18


def test_sigkilled_preprocess_leaves_nothing_after_the_next_run(tiny_root, tmp_path):
    """A real kill: the run is stopped while its workers write, then the same command again."""
    out = tmp_path / "records"
    proc = subprocess.Popen([*CLI, "preprocess", "-i", tiny_root, "-o", str(out), "--image-size", str(SIZE),
                             *IN_MEMORY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and any(n.startswith(".tmp-") and os.path.exists(out / n / "plan.json")
                                for n in os.listdir(out)):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed mid-way"
    proc.kill()
    proc.wait()
    assert [n for n in os.listdir(out) if n.startswith(".tmp-")]      # what the kill left behind
    second = preprocess(tiny_root, out, "--overwrite")
    assert second.returncode == 0, second.stderr
    assert "temp folder(s) that killed runs left" in second.stdout
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert manifest_of(out)["written"] == 18


# ----------------------------------------------------------------------------- 8. disk full
_ENOSPC_RUNNER = """
import errno, logging, os, runpy, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))   # the worktree's cli.py and packages
logging.disable(logging.WARNING)   # Beam's import-time notice; cli.py filters it once it runs
from apache_beam.io import localfilesystem
logging.disable(logging.NOTSET)

original = localfilesystem.LocalFileSystem._path_open

class Full:
    '''A shard file on a disk that has just filled up: the first write fails as the OS fails it.'''
    def __init__(self, f): self.f = f
    def write(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()
    def __getattr__(self, name): return getattr(self.f, name)

def path_open(self, path, mode, *args, **kwargs):
    f = original(self, path, mode, *args, **kwargs)
    return Full(f) if "w" in mode and path.endswith(".tfrecord") else f

localfilesystem.LocalFileSystem._path_open = path_open
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_disk_full_while_writing_is_one_line_and_keeps_the_previous_output(tiny_root, tiny_records, tmp_path):
    out = tmp_path / "records"
    shutil.copytree(tiny_records, out)
    before = digests(out, tiny_root)
    runner = tmp_path / "full_disk.py"
    runner.write_text(_ENOSPC_RUNNER)
    proc = subprocess.run([sys.executable, str(runner), CLI[1], "preprocess", "-i", tiny_root, "-o", str(out),
                           "--image-size", str(SIZE), "--overwrite", *IN_MEMORY],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    refused(proc, "No space left on device", "nothing was replaced")
    assert digests(out, tiny_root) == before                       # old records intact, no temp left


def test_too_little_free_space_is_found_before_any_work(tiny_root, tmp_path):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()[:100]})")
    try:
        # 18 images of 224x224x3 need about 2.6 MiB: more than the disk holds.
        proc = run("preprocess", "-i", tiny_root, "-o", mount / "records", *IN_MEMORY)
        refused(proc, "MiB free but the 18 records need about", "nothing was written")
        assert os.listdir(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ----------------------------------------------------------------------------- 9, 10. odd entries
@pytest.fixture
def odd_root(tiny_root, tmp_path) -> tuple[str, dict[str, str]]:
    """The tiny tree plus a FIFO named like a face, a link to /dev/zero, a dangling link and a link
    loop; returns the root and relpath -> the reject reason each must get."""
    root = tmp_path / "odd"
    shutil.copytree(tiny_root, root)
    folder = root / "aligned" / sorted(os.listdir(root / "aligned"))[0]
    os.mkfifo(folder / "fifo.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "gone.jpg").symlink_to(folder / "no-such-file.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    rel = f"aligned/{folder.name}/"
    return str(root), {rel + "fifo.jpg": "not a regular file (a FIFO)",
                       rel + "zero.jpg": "not a regular file (a character device)",
                       rel + "gone.jpg": "dangling symbolic link",
                       rel + "loop.jpg": "unreadable entry"}


def test_fifos_devices_dangling_links_are_rejects_with_a_reason(odd_root, tmp_path):
    root, expected = odd_root
    out = tmp_path / "records"
    proc = preprocess(root, out)
    assert proc.returncode == 0, proc.stderr
    rejects = rejects_of(out)
    for path, reason in expected.items():
        assert rejects[path].startswith(reason), (path, rejects[path])
    manifest = manifest_of(out)
    assert manifest["found"] == 18 + 4 == manifest["written"] + manifest["rejected"]
    assert manifest["rejected"] == 4
    assert "from 22 files" in proc.stdout


def test_classify_does_not_hang_on_a_fifo_or_read_dev_zero(small_model, odd_root):
    root, expected = odd_root
    fifo, zero = (os.path.join(root, p) for p in list(expected)[:2])
    proc = run("classify", "-m", small_model, "-i", fifo, zero, an_image(root), "--format", "csv", timeout=120)
    assert proc.returncode == 1, proc.stderr
    rows = {line.split(",")[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "a FIFO" in rows[fifo] and "character device" in rows[zero]
    assert ",female," in rows[an_image(root)] or ",male," in rows[an_image(root)]


def test_read_bytes_caps_what_it_reads(tmp_path):
    from pipeline.decode import MAX_IMAGE_BYTES, UnreadableFile, read_bytes

    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2048)
    assert read_bytes(str(big), max_bytes=2048) == b"\xff" * 2048
    with pytest.raises(UnreadableFile) as caught:
        read_bytes(str(big), max_bytes=1024)
    assert caught.value.errno == errno.EFBIG and "cap per image" in caught.value.strerror
    assert MAX_IMAGE_BYTES == 64 * 2**20


# ----------------------------------------------------------------------------- issue 14: no Beam
def test_training_evaluate_and_classify_do_not_import_beam(tiny_records, tiny_root):
    probe = (
        "import sys\n"
        "import model.training, model.evaluation.evaluate, model.inference.classify, model.evaluation.crossval\n"
        "from pipeline.manifest import load_manifest\n"
        "from pipeline.decode import load_image\n"
        "from pipeline.reader import make_dataset\n"
        f"load_manifest({tiny_records!r}); load_image({an_image(tiny_root)!r}, 32)\n"
        f"sum(1 for _ in make_dataset({tiny_records!r}, 'train', 4))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'apache_beam'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
