"""`preprocess --runner dask` on real processes: a `dask scheduler` and `dask worker` processes on
127.0.0.1 (random free ports), started and stopped here, the command run through cli.py."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from .conftest import CLI, ROOT

pytest.importorskip("distributed")

START_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A scheduler and worker processes; `wrap` prefixes a worker's command (a namespace)."""

    def __init__(self, log_dir, workers: int = 2, wrap: list[str] | None = None):
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.env = dict(os.environ, PYTHONPATH=ROOT)
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self._start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                    "scheduler")
        try:
            for index in range(workers):
                self._start_worker(index, wrap or [])
            self.wait_for_workers(workers)
        except BaseException:
            self.stop()     # nothing left running when a worker cannot start
            raise

    def _start(self, args: list[str], name: str, prefix: list[str] = ()) -> subprocess.Popen:
        log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "dask", *args], env=self.env, cwd=tempfile.gettempdir(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _start_worker(self, index: int, wrap: list[str]) -> None:
        self._start(["worker", self.address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                    f"worker{index}", wrap)

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                with Client(self.address, timeout=5, set_as_default=False) as client:
                    client.wait_for_workers(n, timeout=max(1, deadline - time.monotonic()))
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _preprocess(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "preprocess", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def _output_bytes(folder) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("dask_logs")))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    from pipeline.synthetic.tree import make_adience_tree

    root = str(tmp_path_factory.mktemp("dask_tree"))
    make_adience_tree(root, n_train=40, n_valid=12, image_size=64, seed=1)   # with bad files: rejects too
    return root


@pytest.fixture(scope="module")
def direct_output(tree, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("dask_ref") / "records")
    proc = _preprocess("-i", tree, "-o", out, "--train-shards", "4", "--valid-shards", "2")
    assert proc.returncode == 0, proc.stderr
    return out


def test_dask_output_is_byte_identical_and_both_workers_work(cluster, tree, direct_output, tmp_path):
    out = str(tmp_path / "records")
    proc = _preprocess("-i", tree, "-o", out, "--train-shards", "4", "--valid-shards", "2",
                       "--runner", "dask", "--dask_client_address", cluster.address)
    assert proc.returncode == 0, proc.stderr
    assert f"DaskRunner ({cluster.address}, 2 workers)" in proc.stdout
    spread = [line for line in proc.stdout.splitlines() if "work spread over" in line]
    assert spread and "2 worker processes" in spread[0], proc.stdout   # a partition per shard: both worked
    counts = [int(n) for n in spread[0].rsplit(":", 1)[1].replace("files", "").split("+")]
    assert len(counts) == 2 and min(counts) > 0 and sum(counts) == 58   # 59 found, 1 in a skipped folder
    assert _output_bytes(out) == _output_bytes(direct_output)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_unreachable_scheduler_is_one_line(tree, tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"     # nobody listens there
    proc = _preprocess("-i", tree, "-o", str(tmp_path / "out"), "--runner", "DaskRunner",
                       "--dask_client_address", address, "--dask_connection_timeout", "2")
    line = _one_error_line(proc)
    assert f"cannot reach the Dask scheduler at {address}" in line and "dask scheduler" in line
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_workers_that_cannot_see_the_paths_are_one_line(tree, tmp_path):
    """A worker in its own mount namespace, where the test's folders are an empty tmpfs: what a
    worker on another machine without the shared file system sees."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("user and mount namespaces are not available here")
    hidden = os.path.dirname(tree)          # the tree's parent: the input is not there for the worker
    wrap = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"']
    blind = Cluster(str(tmp_path), workers=1, wrap=wrap)
    try:
        proc = _preprocess("-i", tree, "-o", str(tmp_path / "out"), "--runner", "dask",
                           "--dask_client_address", blind.address)
    finally:
        blind.stop()
    line = _one_error_line(proc)
    assert "cannot see the input" in line and "gs://" in line and "same path" in line


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory) -> str:
    """Shards of about 300 files at 256 px: a few seconds each, long enough to act mid-shard."""
    from pipeline.synthetic.tree import make_adience_tree

    root = str(tmp_path_factory.mktemp("dask_big_tree"))
    make_adience_tree(root, n_train=600, n_valid=20, image_size=256, seed=2, bad_files=False, variety=False)
    return root


def _first_heartbeat(out, proc) -> dict:
    """The first progress file a worker writes (after a second of work on a shard)."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        for beat in glob.glob(str(out / ".tmp-*" / "progress" / "train-*.json")):
            try:
                return json.load(open(beat))
            except (OSError, ValueError):
                continue
        time.sleep(0.05)
    raise AssertionError("no worker reported progress before the run ended")


def test_ctrl_c_cancels_the_clusters_tasks(cluster, big_tree, tmp_path):
    out = tmp_path / "records"
    proc = subprocess.Popen([*CLI, "preprocess", "-i", big_tree, "-o", str(out), "--train-shards", "2",
                             "--runner", "dask", "--dask_client_address", cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    _first_heartbeat(out, proc)
    os.killpg(proc.pid, signal.SIGINT)      # what Ctrl-C does to the command (the workers run elsewhere)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "preprocess: interrupted; the previous output in OUT (if any) is untouched" in stderr
    time.sleep(2)        # a task that was running stops at its next heartbeat, writing nothing
    assert os.listdir(out) == []
    cluster.wait_for_workers(2)             # the workers live on, ready for the next run


def test_a_killed_worker_loses_nothing(cluster, big_tree, tmp_path):
    """A worker killed in the middle of a shard: Dask runs the shard again on a worker (the
    nanny restarts the killed one); or, if it cannot, one line with the previous output kept.
    Either way OUT ends with exactly the reference bytes."""
    root = big_tree
    out = tmp_path / "records"
    ref = _preprocess("-i", root, "-o", str(out), "--train-shards", "2")
    assert ref.returncode == 0, ref.stderr
    before = _output_bytes(out)
    proc = subprocess.Popen([*CLI, "preprocess", "-i", root, "-o", str(out), "--train-shards", "2", "--overwrite",
                             "--runner", "dask", "--dask_client_address", cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    victim = int(_first_heartbeat(out, proc)["worker"].rsplit(":", 1)[1])
    os.kill(victim, signal.SIGKILL)       # the worker process (its nanny, started by this test, lives on)
    stdout, stderr = proc.communicate(timeout=180)
    if proc.returncode == 0:
        assert "wrote 620 records" in stdout
    else:
        _one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert _output_bytes(out) == before
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    cluster.wait_for_workers(2)           # the nanny brought the worker back
