"""Which Beam runner runs `preprocess`, with which options.

- DirectRunner (the default): Beam's FnApiRunner with multi-processing workers on every core.
- DaskRunner (`--runner dask` or `DaskRunner`): Beam's runner on a Dask.distributed cluster
  (pipeline/preprocess/dask_cluster.py). Beam registers the Dask options (--dask_client_address,
  --dask_npartitions, ...) only once its dask runner module is imported, and resolves only full
  class paths for it, so both are done here before the options are parsed.
- Any other runner Beam knows (Dataflow, Flink, Spark...), as Beam runs it.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability import python_urns
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo, FnApiRunner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

from pipeline.errors import DataError

DIRECT, DASK, OTHER = "direct", "dask", "other"
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
_DASK_NAMES = {"dask", "daskrunner", DASK_RUNNER.lower()}
_DIRECT_NAMES = {"direct", "directrunner"}
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class RunnerChoice:
    """The runner's kind, the Beam arguments, and a description for the summary."""

    kind: str
    args: list[str]
    description: str
    given: set[str] = field(default_factory=set)    # option names the user passed

    def options(self, *extra: str) -> PipelineOptions:
        return PipelineOptions([*self.args, *extra])


def _runner_name(args: list[str]) -> str | None:
    return PipelineOptions(args).view_as(StandardOptions).runner


def _without_runner(args: list[str]) -> list[str]:
    """args without their --runner option (as `--runner X` or `--runner=X`)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--runner":
            skip = True
        elif not arg.startswith("--runner="):
            out.append(arg)
    return out


def _check_known(options: PipelineOptions) -> None:
    """DataError for options that neither the CLI nor Beam knows (Beam would drop them)."""
    beam_logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_logger.level
    beam_logger.setLevel(logging.ERROR)   # its "Discarding unparseable args" warning: we raise instead
    try:
        known = set(options.get_all_options())
        unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - known)
    finally:
        beam_logger.setLevel(level)
    if unknown:
        raise DataError(f"unknown option(s) {', '.join('--' + u for u in unknown)}: neither preprocess "
                        f"nor Beam's PipelineOptions knows them (see `python cli.py preprocess --help`)")


def choose_runner(beam_args: list[str] | None) -> RunnerChoice:
    """The runner of the Beam arguments, with our defaults unless the user chose (DirectRunner:
    multi-processing on every core; Dask: see dask_cluster)."""
    args = list(beam_args or [])
    given = {a.split("=", 1)[0] for a in args}
    runner = _runner_name(args)
    if runner is not None and runner.lower() in _DASK_NAMES:
        try:
            import apache_beam.runners.dask.dask_runner  # noqa: F401 - registers the Dask options
        except ImportError:
            raise DataError("--runner dask needs Dask: pip install 'gender-classifier[dask]' "
                            "(or pip install 'apache-beam[dask]')") from None
        args = [*_without_runner(args), f"--runner={DASK_RUNNER}"]
        _check_known(PipelineOptions(args))
        return RunnerChoice(DASK, args, "DaskRunner", given)
    _check_known(PipelineOptions(args))
    if runner is not None and runner.lower() not in _DIRECT_NAMES:
        return RunnerChoice(OTHER, args, str(runner), given)
    if "--direct_running_mode" not in given:
        args.append("--direct_running_mode=multi_processing")
    if "--direct_num_workers" not in given:
        args.append(f"--direct_num_workers={os.cpu_count() or 1}")
    if "--default_sdk_harness_log_level" not in given:
        # Local worker processes otherwise log their start, stop and Beam-internal warnings on
        # our terminal; errors still show.
        args.append("--default_sdk_harness_log_level=ERROR")
    d = PipelineOptions(args).view_as(DirectOptions)
    workers = d.direct_num_workers or (os.cpu_count() or 1)
    description = f"DirectRunner ({d.direct_running_mode}, {workers} worker{'s' * (workers != 1)})"
    return RunnerChoice(DIRECT, args, description, given)


class _QuietWorkersRunner(FnApiRunner):
    """The FnApiRunner with its multi_processing workers started through `pipeline.preprocess.worker`
    (Beam's own worker, with Python logging set up before Beam is imported: see there) instead of
    `python -m apache_beam.runners.worker.sdk_worker_main`. The worker command is the payload of
    the pipeline's subprocess environment, which is how Beam tells a runner how to start workers."""

    def run_via_runner_api(self, pipeline_proto, options):
        worker = [sys.executable, "-m", "pipeline.preprocess.worker", "--launcher-pid", str(os.getpid())]
        # Beam runs the command with the shell; `exec` keeps the launcher thread's signal mask
        # (SIGINT blocked, see job._run_pipeline) for the worker, where dash would reset it.
        command = (f"exec {shlex.join(worker)}" if os.name == "posix" else subprocess.list2cmdline(worker)).encode()
        for environment in pipeline_proto.components.environments.values():
            if environment.urn == python_urns.SUBPROCESS_SDK and environment.payload.endswith(b"sdk_worker_main"):
                environment.payload = command
        return super().run_via_runner_api(pipeline_proto, options)


def local_runner(options: PipelineOptions) -> FnApiRunner:
    """The FnApiRunner, built the way Beam's DirectRunner builds it. Beam 2.77's DirectRunner first
    tries the Prism runner, which it downloads from GitHub at run time and which does not honour
    --direct_running_mode / --direct_num_workers; the FnApiRunner runs offline with our settings."""
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return _QuietWorkersRunner(provision_info=provision)


@contextmanager
def workers_can_import_us() -> Iterator[None]:
    """Local worker processes (DirectRunner multi_processing, a Dask LocalCluster) inherit the
    environment and must import `pipeline` to unpickle the DoFn, also when the CLI was started from
    another folder without installing the package: put the project root on their PYTHONPATH while
    the job runs. (Remote workers get the code by installing it: a wheel, --setup_file, a container.)"""
    before = os.environ.get("PYTHONPATH")
    parts = [p for p in (before or "").split(os.pathsep) if p]
    if PROJECT_ROOT not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([PROJECT_ROOT, *parts])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
