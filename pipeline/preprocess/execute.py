"""Running the graph of `preprocess` on the chosen runner while the launcher reports progress from
the workers' heartbeat files (runners such as Dask answer no metrics queries), and Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from pipeline.errors import DataError
from pipeline.preprocess import beam_files
from pipeline.preprocess.beam_files import pipeline_failure, read_file
from pipeline.preprocess.events import Advanced, Progress, Started
from pipeline.preprocess.graph import METRICS_NAMESPACE, PLAN_NAME, PROGRESS_DIR, SUMMARY_DIR, build_graph
from pipeline.preprocess.runners import DASK, DIRECT, RunnerChoice, local_runner, workers_can_import_us

POLL_SECONDS = 0.5


def read_json_files(folder: str) -> dict[str, dict]:
    """name -> parsed JSON of every file in a folder; files being rewritten right now are skipped."""
    bodies = {}
    for name in beam_files.list_names(folder):
        try:
            bodies[name] = json.loads(read_file(FileSystems.join(folder, name)))
        except Exception:  # noqa: BLE001 - a heartbeat caught mid-write: use the next poll's value
            continue
    return bodies


def _runner_failure(err: BaseException, out: str) -> BaseException:
    """A runner's error as the command says it: a cluster whose workers kept dying on a task
    (Dask's KilledWorker, after its retries) is one line; see also beam_files.pipeline_failure."""
    if type(err).__name__ == "KilledWorker":
        return DataError(f"the Dask workers running a shard kept dying ({str(err).splitlines()[0]}); nothing "
                         f"was replaced in {out}: check the workers' memory and logs, then rerun")
    return pipeline_failure(err, out)


@dataclass
class Job:
    """One run of the graph on a runner, while the launcher reports progress from the heartbeats."""

    plan: list
    root: str
    tmp: str
    image_size: int
    total: int
    start: float
    progress: Progress | None

    def run(self, choice: RunnerChoice) -> tuple[str, dict | None]:
        """(the runner as the summary names it, Beam's counters or None)."""
        if choice.kind == DASK:
            return self._run_on_dask(choice)
        options = choice.options()
        runner = local_runner(options) if choice.kind == DIRECT else None
        return choice.description, self._run_pipeline(beam.Pipeline(runner=runner, options=options),
                                                      choice.description, False)

    def _run_on_dask(self, choice: RunnerChoice) -> tuple[str, dict | None]:
        from apache_beam.runners.dask.dask_runner import DaskOptions

        from pipeline.preprocess.dask_cluster import dask_cluster
        from pipeline.preprocess.worker_checks import check_workers

        d = choice.options().view_as(DaskOptions)
        timeout = d.timeout if isinstance(d.timeout, (int, float)) else None
        with dask_cluster(d.address, d.scheduler_file, timeout) as cluster:
            sample = [FileSystems.join(self.root, items[0][0]) for _, items in self.plan if items][:1]
            check_workers(cluster.client, [self.root, *sample], [FileSystems.join(self.tmp, PLAN_NAME)])
            extra = []
            if d.address is None and d.scheduler_file is None:
                extra.append(f"--dask_client_address={cluster.address}")     # the LocalCluster
            if not {"--dask_npartitions", "--dask_partition_size"} & choice.given:
                extra.append(f"--dask_npartitions={len(self.plan)}")        # a partition per shard
            pipeline = beam.Pipeline(options=choice.options(*extra))
            description = cluster.describe()
            return description, self._run_pipeline(pipeline, description, True)

    def _run_pipeline(self, pipeline: beam.Pipeline, description: str, one_element_per_shard: bool):
        """Run the graph in a background thread while this thread reports progress; Ctrl-C here
        cancels a cluster's tasks (a local runner's workers end with the terminal's signal)."""
        build_graph(pipeline, self.plan, self.root, self.tmp, self.image_size, one_element_per_shard)
        outcome: dict = {}
        thread = threading.Thread(target=_run_in_thread, args=(pipeline, outcome), name="beam-preprocess", daemon=True)
        thread.start()
        if self.progress is not None:
            self.progress(Started(self.total, description))
        try:
            self._report_until_done(thread)
        except BaseException:
            _cancel(outcome.get("result"))
            # Ctrl-C to the launcher alone (not the terminal's whole group) leaves the local workers
            # running: they would log their launcher's closed connections and could re-create the
            # temp folder the launcher removes next. They are ended first, quietly.
            stop_local_workers()
            raise
        if "error" in outcome:
            raise _runner_failure(outcome["error"], self.tmp.rsplit("/", 1)[0])
        try:
            query = outcome["result"].metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
            return {c.key.metric.name: int(c.committed) for c in query["counters"]}
        except Exception:  # noqa: BLE001 - some runners (Dask) answer no metrics queries
            return None

    def _report_until_done(self, thread: threading.Thread) -> None:
        progress_dir = FileSystems.join(self.tmp, PROGRESS_DIR)
        summary_dir = FileSystems.join(self.tmp, SUMMARY_DIR)
        reported = 0
        while thread.is_alive():
            thread.join(POLL_SECONDS)
            if self.progress is not None and thread.is_alive():
                beats = read_json_files(progress_dir)
                beats.update({k: {"done": v.get("assigned", 0)} for k, v in read_json_files(summary_dir).items()})
                # A shard retried elsewhere (a lost worker) starts again from 0: never report less.
                reported = max(reported, min(self.total, sum(int(b.get("done", 0)) for b in beats.values())))
                self.progress(Advanced(reported, self.total, reported / max(time.monotonic() - self.start, 1e-9)))


WORKER_STOP_SECONDS = 3.0


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc; [] elsewhere)."""
    found = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                found += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


def stop_local_workers() -> list[int]:
    """End this launcher's local worker processes (the DirectRunner's multi_processing workers, its
    only child processes) with SIGINT, which ends them silently (pipeline.preprocess.worker: SIGINT
    is their default action, or pending until they unblock it), then SIGKILL any still running
    after WORKER_STOP_SECONDS; returns their pids."""
    from pipeline.preprocess.worker import process_alive

    workers = _children(os.getpid())
    for pid in workers:
        try:
            os.kill(pid, signal.SIGINT)
        except OSError:
            pass
    deadline = time.monotonic() + WORKER_STOP_SECONDS
    while time.monotonic() < deadline and any(process_alive(pid) for pid in workers):
        time.sleep(0.05)
    for pid in workers:
        if process_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return workers


def _run_in_thread(pipeline: beam.Pipeline, outcome: dict) -> None:
    if hasattr(signal, "pthread_sigmask"):
        # The worker processes this thread starts inherit its signal mask: SIGINT blocked, so a
        # Ctrl-C during a worker's start-up waits until the worker lets it end it, silently
        # (pipeline.preprocess.worker). Signals still reach the launcher's main thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with workers_can_import_us():
            result = pipeline.run()
            outcome["result"] = result
            try:
                result.wait_until_finish()
            finally:
                _close_client(result)
    except BaseException as err:  # noqa: BLE001 - re-raised in the launching thread
        outcome["error"] = err


def _close_client(result) -> None:
    """Beam's DaskRunner opens a Dask client per run and never closes it."""
    client = getattr(result, "client", None)
    if client is not None:
        client.close()


def _cancel(result) -> None:
    """Cancel the tasks a cluster has not run yet (a running task stops at its next heartbeat,
    when it finds the temp folder gone: graph.WriteShard)."""
    if result is not None and hasattr(result, "client"):
        try:
            result.cancel()
        finally:
            _close_client(result)
