"""`python cli.py convert`: the .keras it writes, load_backbone on both formats, and one clear line
with exit status 2 for every kind of wrong file."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from model.network.backbone import convert_t7_to_keras, load_backbone, read_vggface_widths
from model.runtime import precision
from model.errors import ModelError
from model.network.t7_writer import (T7Object, conv_module, random_vggface_weights, sequential,
                             vggface_modules, write_t7)
from model.network.vggface import SLIM_WIDTHS, WEIGHTED_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, os.path.join(ROOT, "cli.py")]

# TensorFlow's C++ start-up logging goes to stderr before any Python code can silence it (absl
# logs "before InitializeLog" ignore TF_CPP_MIN_LOG_LEVEL); it is not ours, so the checks skip it.
_TF_NATIVE_LOG = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] .*"
    r"|To enable the following instructions: .*)$")


def _our_stderr_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not _TF_NATIVE_LOG.match(line)]


def _bad_files(root) -> dict[str, list[str]]:
    """Each wrong-input case as the arguments of one `convert` run."""
    from PIL import Image

    good = str(root / "slim.t7")
    write_t7(good, sequential(vggface_modules(random_vggface_weights(SLIM_WIDTHS, seed=0))))
    data = open(good, "rb").read()
    (root / "truncated.t7").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (64, 64), (10, 120, 200)).save(root / "face.jpg")
    (root / "noise.t7").write_bytes(np.random.default_rng(0).bytes(10_000))

    tanh = vggface_modules(random_vggface_weights(SLIM_WIDTHS, seed=1))
    tanh[3] = T7Object("nn.Tanh", {"output": np.empty(0, np.float32)})
    write_t7(str(root / "tanh.t7"), sequential(tanh))

    k5 = vggface_modules(random_vggface_weights(SLIM_WIDTHS, seed=2))
    k5[0] = conv_module(np.ones((4, 3 * 25), np.float32), np.zeros(4, np.float32), kernel=5, pad=2)
    write_t7(str(root / "kernel5.t7"), sequential(k5))

    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, name="dense")])
    other.save(root / "other.keras")

    out = str(root / "out.keras")
    return {
        "missing": ["-w", str(root / "VGG_FACE.t7"), "-o", out],
        "truncated": ["-w", str(root / "truncated.t7"), "-o", out],
        "jpeg": ["-w", str(root / "face.jpg"), "-o", out],
        "noise": ["-w", str(root / "noise.t7"), "-o", out],
        "tanh": ["-w", str(root / "tanh.t7"), "-o", out],
        "kernel5": ["-w", str(root / "kernel5.t7"), "-o", out],
        "not_vggface_keras": ["-w", str(root / "other.keras"), "-o", out],
        "not_keras_output": ["-w", good, "-o", str(root / "out.h5")],
    }


EXPECTED_MESSAGES = {
    "missing": "does not exist",
    "truncated": "is truncated",
    "jpeg": "is not a Torch7 file",
    "noise": "is not a Torch7 file",
    "tanh": "module 4 is nn.Tanh, expected nn.ReLU (relu1_2)",
    "kernel5": "module 1 (nn.SpatialConvolutionMM conv1_1) has kW=5, expected 3",
    "not_vggface_keras": "is not a VGG-Face model; convert VGG_FACE.t7 with `python cli.py convert`",
    "not_keras_output": "must end in .keras",
}


# Each `python cli.py` process pays TensorFlow's import (about 7 CPU-seconds), so one case of each
# kind runs as a real process; the others of the same kind go through cli.main in-process, which
# is the same code minus sys.exit.
SUBPROCESS_CASES = ("missing", "truncated", "jpeg", "tanh", "not_vggface_keras")
IN_PROCESS_CASES = ("noise", "kernel5", "not_keras_output")


@pytest.fixture(scope="module")
def bad_cases(tmp_path_factory) -> tuple[dict[str, list[str]], str]:
    root = tmp_path_factory.mktemp("convert")
    return _bad_files(root), str(root)


@pytest.fixture(scope="module")
def cli_runs(bad_cases, slim_t7) -> dict[str, tuple[subprocess.CompletedProcess, str]]:
    """The real `python cli.py convert` runs of this module, started together so that their
    TensorFlow imports overlap instead of queueing."""
    cases, root = bad_cases
    good_out = os.path.join(root, "good", "vggface.keras")
    runs = {name: cases[name] for name in SUBPROCESS_CASES}
    runs["good"] = ["-w", slim_t7, "-o", good_out]
    procs = {name: subprocess.Popen(CLI + ["convert"] + args, cwd=root, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, args in runs.items()}
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        results[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
                         good_out if name == "good" else root)
    return results


def _assert_refused(status: int, stderr: str, root: str, case: str) -> None:
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = _our_stderr_lines(stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert EXPECTED_MESSAGES[case] in lines[0]
    # A refused run writes nothing.
    assert not os.path.exists(os.path.join(root, "out.keras"))
    assert not any(name.endswith(".tmp.keras") for name in os.listdir(root))


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_wrong_input_through_the_command(cli_runs, case):
    run, root = cli_runs[case]
    _assert_refused(run.returncode, run.stderr, root, case)


@pytest.mark.parametrize("case", IN_PROCESS_CASES)
def test_wrong_input_through_cli_main(bad_cases, case, capsys):
    import cli

    cases, root = bad_cases
    status = cli.main(["convert"] + cases[case])
    _assert_refused(status, capsys.readouterr().err, root, case)


def test_every_case_is_covered():
    assert set(SUBPROCESS_CASES) | set(IN_PROCESS_CASES) == set(EXPECTED_MESSAGES)


def test_convert_writes_a_safe_mode_keras_with_the_same_outputs(cli_runs, slim_t7):
    run, out = cli_runs["good"]
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert out in run.stdout and "163,444 parameters" in run.stdout
    assert "conv widths 4,4,8,8,16,16,16,32,32,32,32,32,32" in run.stdout
    assert os.listdir(os.path.dirname(out)) == ["vggface.keras"]  # no temporary left behind

    loaded = keras.models.load_model(out, safe_mode=True)
    from_t7 = load_backbone(slim_t7)
    from_keras = load_backbone(out)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in from_t7.layers]
    images = np.random.default_rng(5).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    want = np.asarray(from_t7(images))
    np.testing.assert_array_equal(np.asarray(loaded(images)), want)
    np.testing.assert_array_equal(np.asarray(from_keras(images)), want)
    for name in WEIGHTED_NAMES:
        for a, b in zip(from_t7.get_layer(name).get_weights(),
                        from_keras.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert read_vggface_widths(out) == SLIM_WIDTHS


def test_load_backbone_builds_under_the_current_policy(cli_runs):
    _, out = cli_runs["good"]
    with precision("mixed_bfloat16"):
        model = load_backbone(out)
    assert model.get_layer("conv3_1").compute_dtype == "bfloat16"
    assert model.get_layer("conv3_1").kernel.dtype == "float32"  # variables stay float32
    assert model.get_layer("prob").compute_dtype == "float32"


def test_load_backbone_refuses_a_keras_file_that_is_not_vggface(tmp_path):
    # A VGG-Face cut at relu4_2, like the classifier's trunk: the named layers above are missing.
    from model.network.vggface import build_vggface

    full = build_vggface(SLIM_WIDTHS)
    trunk = keras.Model(full.input, full.get_layer("relu4_2").output)
    path = str(tmp_path / "trunk.keras")
    trunk.save(path)
    with pytest.raises(ModelError, match=r"is not a VGG-Face model; .*\(no layer conv4_3\)"):
        load_backbone(path)
    fake = tmp_path / "fake.keras"
    fake.write_bytes(b"not a zip archive")
    with pytest.raises(ModelError, match="not a .keras file"):
        load_backbone(str(fake))


def test_load_backbone_at_another_image_size_zeroes_fc6(slim_t7):
    model = load_backbone(slim_t7, image_size=128)
    assert not np.any(model.get_layer("fc6").kernel.numpy())
    reference = load_backbone(slim_t7)
    np.testing.assert_array_equal(model.get_layer("conv5_3").kernel.numpy(),
                                  reference.get_layer("conv5_3").kernel.numpy())
    np.testing.assert_array_equal(model.get_layer("fc8").kernel.numpy(),
                                  reference.get_layer("fc8").kernel.numpy())


def test_a_failed_write_leaves_no_half_file_and_keeps_the_old_one(slim_t7, tmp_path, monkeypatch):
    out = tmp_path / "vggface.keras"
    out.write_bytes(b"previous model")

    def broken_save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    with pytest.raises(ModelError, match="cannot write .*No space left on device"):
        convert_t7_to_keras(slim_t7, str(out))
    assert out.read_bytes() == b"previous model"
    assert sorted(os.listdir(tmp_path)) == ["vggface.keras"]


def test_an_output_under_a_file_is_a_clear_error(slim_t7, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ModelError, match="cannot write"):
        convert_t7_to_keras(slim_t7, str(blocker / "vggface.keras"))


def test_progress_reports_each_stage(slim_t7, tmp_path):
    from model.progress import Reading, Writing

    events = []
    summary = convert_t7_to_keras(slim_t7, str(tmp_path / "v.keras"), progress=events.append)
    assert events == [Reading(slim_t7), Writing(str(tmp_path / "v.keras"), summary.params)]
    assert summary.widths == SLIM_WIDTHS and summary.params == 163_444
    assert summary.bytes_written == os.path.getsize(tmp_path / "v.keras")
