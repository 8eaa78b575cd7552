"""Installing: the wheel works outside this folder, and `make` picks a supported Python."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import cli
from tests.conftest import ROOT

SOURCES = ("pyproject.toml", "README.md", "cli.py", "cli_render.py", "pipeline", "model")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> str:
    """The wheel built from a copy of the sources and installed (not editable) into a fresh
    virtual environment that sees the test environment's packages (TensorFlow, Beam …) through a
    .pth file: `venv --system-site-packages` would give the base interpreter's, not this venv's."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if os.path.isdir(os.path.join(ROOT, name)) else shutil.copy
        copy(os.path.join(ROOT, name), src / name)
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(dist), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("gender_classifier-*.whl")
    assert wheel.name == f"gender_classifier-{cli.__version__}-py3-none-any.whl"
    # Every module of the source tree is in the wheel (subpackages such as model/training too).
    sources = {os.path.relpath(os.path.join(d, f), src).replace(os.sep, "/")
               for package in ("pipeline", "model") for d, _, files in os.walk(src / package)
               for f in files if f.endswith(".py")}
    assert sources | {"cli.py", "cli_render.py"} <= set(zipfile.ZipFile(wheel).namelist())
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "test-environment.pth"), "w") as f:
        f.write("\n".join(sorted(ours)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    return str(venv)


def _run(venv: str, args: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([os.path.join(venv, "bin", "gender-classifier"), *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


def test_the_installed_console_script_runs_from_anywhere(installed, tmp_path):
    where = subprocess.run([os.path.join(installed, "bin", "python"), "-c",
                            "import cli, pipeline.preprocess.worker as w; print(cli.__file__); print(w.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout.split()
    assert all(path.startswith(installed) for path in where)     # the wheel's code, not this folder's

    version = _run(installed, ["--version"], cwd=str(tmp_path))
    assert version.returncode == 0 and version.stdout == f"gender-classifier {cli.__version__}\n"

    from pipeline.synthetic.tree import make_adience_tree

    make_adience_tree(str(tmp_path / "faces"), n_train=12, n_valid=6, image_size=64, seed=3)
    # Two Beam worker processes: they start from the installed package too.
    done = _run(installed, ["preprocess", "-i", "faces", "-o", "records", "--direct_num_workers=2"], cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "wrote 18 records" in done.stdout and "2 workers" in done.stdout
    assert (tmp_path / "records" / "manifest.json").is_file()

    # A library message names the program as the user ran it.
    bad = _run(installed, ["train", "-w", "w.t7", "-i", "faces", "-o", "m.keras"], cwd=str(tmp_path))
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "`gender-classifier " in bad.stderr
    assert "python cli.py" not in bad.stderr


# ------------------------------------------------------------------ the Makefile's choice of Python
def _fake_bin(tmp_path, working: dict[str, str], refusing: tuple[str, ...]) -> str:
    """A PATH folder: `working` names run the given interpreter, `refusing` ones fail like a pyenv
    shim for a version that is not selected."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in working.items():
        os.symlink(target, bin_dir / name)
    for name in refusing:
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho 'pyenv: {name}: command not found' >&2\nexit 127\n")
        script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"


def _make(tmp_path, path: str, *args: str) -> subprocess.CompletedProcess:
    project = tmp_path / "project"
    if not project.exists():
        project.mkdir()
        for name in ("Makefile", "pyproject.toml", "requirements.lock"):
            shutil.copy(os.path.join(ROOT, name), project / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MAKEFLAGS")} | {"PATH": path}
    return subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=project, env=env, timeout=60)


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_make_picks_the_newest_supported_python_that_runs(tmp_path):
    path = _fake_bin(tmp_path, {"python3.12": sys.executable, "python3": sys.executable},
                     refusing=("python3.13",))
    dry = _make(tmp_path, path, "test")
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"bin/python3\.12 -m venv \.venv", dry.stdout)


@needs_make
def test_make_says_which_python_to_install(tmp_path):
    path = _fake_bin(tmp_path, {}, refusing=("python3.13", "python3.12", "python3.11", "python3"))
    dry = _make(tmp_path, path, "test")
    # -n still runs the check's `test -n ""`: make stops there with the message.
    assert "no Python 3.11, 3.12 or 3.13 found" in dry.stdout + dry.stderr


@needs_make
def test_make_rebuilds_a_venv_made_by_an_unsupported_python(tmp_path):
    path = _fake_bin(tmp_path, {"python3.11": sys.executable}, refusing=())
    project = tmp_path / "project"
    _make(tmp_path, path, "test")                               # lays out the project folder
    venv_bin = project / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    old = venv_bin / "python"                                   # a .venv left by Python 3.14
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    (project / ".venv" / ".installed").touch()                  # even with a fresh stamp
    dry = _make(tmp_path, path, "test")
    assert "rm -rf .venv" in dry.stdout and "-m venv .venv" in dry.stdout
    old.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")  # a healthy one is kept
    dry = _make(tmp_path, path, "test")
    assert "-m venv" not in dry.stdout and "pytest" in dry.stdout
