"""The Dask.distributed cluster a `--runner dask` run uses: the scheduler the user named
(--dask_client_address or --dask_scheduler_file), or, with neither, a LocalCluster on this
machine (a worker process per core, one thread each: the work is Python decoding, which holds
the GIL), so that the same flag works on a laptop. Reaching it is checked here, in one line.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from pipeline.errors import DataError
from pipeline.preprocess.runners import workers_can_import_us

# How long a named scheduler may take to answer when --dask_connection_timeout is not given
# (Dask's own default is 30 s; a scheduler that is up answers in milliseconds).
CONNECT_SECONDS = 10.0
# How long to wait for the first worker of a scheduler that has none yet (workers being started).
FIRST_WORKER_SECONDS = 30.0


@dataclass
class DaskCluster:
    """A connected client; `address` is what Beam's DaskRunner is given."""

    client: object            # distributed.Client
    address: str
    local: bool               # a LocalCluster started by this run

    @property
    def workers(self) -> dict[str, dict]:
        return self.client.scheduler_info()["workers"]

    def describe(self) -> str:
        n = len(self.workers)
        where = "LocalCluster" if self.local else self.address
        return f"DaskRunner ({where}, {n} worker{'s' * (n != 1)})"


def _connect(address: str | None, scheduler_file: str | None, timeout: float | None):
    import distributed

    where = address or f"the scheduler file {scheduler_file}"
    try:
        return distributed.Client(address=address, scheduler_file=scheduler_file, set_as_default=False,
                                  timeout=timeout or CONNECT_SECONDS)
    except (OSError, TimeoutError, ValueError) as err:
        reason = str(err).split("\n", 1)[0] or type(err).__name__
        raise DataError(f"cannot reach the Dask scheduler at {where} ({reason}); start it (`dask scheduler`) "
                        f"and its workers (`dask worker ADDRESS`), or fix --dask_client_address") from None


@contextmanager
def dask_cluster(address: str | None, scheduler_file: str | None = None,
                 timeout: float | None = None) -> Iterator[DaskCluster]:
    """A client of the named cluster, or of a LocalCluster sized to the cores; closed after."""
    import distributed

    # Dask logs its connections and worker deaths itself; the command says what matters in one line.
    logging.getLogger("distributed").setLevel(logging.ERROR)
    local = None
    if address is None and scheduler_file is None:
        cores = os.cpu_count() or 1
        with workers_can_import_us():   # the worker processes inherit PYTHONPATH at their start
            local = distributed.LocalCluster(n_workers=cores, threads_per_worker=1, processes=True,
                                             dashboard_address=None, silence_logs=logging.ERROR)
        address = local.scheduler_address
    client = _connect(address, scheduler_file, timeout)
    try:
        try:
            client.wait_for_workers(1, timeout=FIRST_WORKER_SECONDS)
        except TimeoutError:
            raise DataError(f"the Dask scheduler at {client.scheduler.address} has no workers after "
                            f"{FIRST_WORKER_SECONDS:.0f} s; start some (`dask worker {client.scheduler.address}`)") from None
        yield DaskCluster(client, client.scheduler.address, local is not None)
    finally:
        client.close()
        if local is not None:
            local.close()
