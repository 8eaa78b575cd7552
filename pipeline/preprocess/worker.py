"""Entry point of the local Beam worker processes (DirectRunner multi_processing mode).

Beam's FnApiRunner starts each worker as `python -m apache_beam.runners.worker.sdk_worker_main`.
Importing Beam there logs a root-logger warning when the optional BigQuery client is absent
("apitools not found"), and Python's logging answers the first root-logger call of a process
without handlers with an implicit `basicConfig()`: a stderr handler that then prints the
worker's start-up records ("Logging handler created.") before the worker has read
--default_sdk_harness_log_level. Giving the root logger its handler first avoids that: the
worker's records then reach the launcher through Beam's own Fn API logging service (the launcher
shows them with -v), and only errors are also written to the worker's stderr.

A worker of a command-line tool must also end with its launcher: Ctrl-C reaches every process of
the terminal's group and the launcher reports it (exit status 130 and what to do), so a worker
just ends, without a traceback of its own; and a worker whose launcher is gone — killed alone, or
stopped by `timeout` — ends too instead of waiting forever for work as an orphan.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

LAUNCHER_CHECK_SECONDS = 1.0


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True   # no /proc (not Linux): os.kill's answer stands


def exit_when_gone(pid: int) -> None:
    """End this process as soon as process `pid` is gone (checked every second, in a daemon thread)."""
    def watch() -> None:
        while process_alive(pid):
            time.sleep(LAUNCHER_CHECK_SECONDS)
        os._exit(1)   # the launcher that would collect this worker's results is gone

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.preprocess.worker")
    parser.add_argument("--launcher-pid", type=int, default=None, help="stop when this process is gone")
    launcher = parser.parse_args().launcher_pid
    if launcher is not None:
        exit_when_gone(launcher)
    # The worker starts with SIGINT blocked (see pipeline.preprocess.job): a Ctrl-C during start-up is
    # pending, not a KeyboardInterrupt traceback. From here on SIGINT (a pending one at once) ends
    # the worker, before it could log its launcher's closed connections as errors.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    logging.getLogger().addHandler(errors)
    # Only now, with the root logger's handler in place (see above).
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
