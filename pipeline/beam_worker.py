"""Entry point of the local Beam worker processes (DirectRunner multi_processing mode).

Beam's FnApiRunner starts each worker as `python -m apache_beam.runners.worker.sdk_worker_main`.
Importing Beam there logs a root-logger warning when the optional BigQuery client is absent
("apitools not found"), and Python's logging answers the first root-logger call of a process
without handlers with an implicit `basicConfig()`: a stderr handler that then prints the
worker's start-up records ("Logging handler created.") before the worker has read
--default_sdk_harness_log_level. Giving the root logger its handler first avoids that: the
worker's records then reach the launcher through Beam's own Fn API logging service (the launcher
shows them with -v), and only errors are also written to the worker's stderr.
"""
from __future__ import annotations

import logging
import signal
import sys

# Ctrl-C reaches every process of the terminal's group: the launcher reports it (exit status 130
# and what to do); a worker just stops, without a KeyboardInterrupt traceback of its own.
signal.signal(signal.SIGINT, signal.SIG_DFL)

_stderr = logging.StreamHandler(sys.stderr)
_stderr.setLevel(logging.ERROR)
logging.getLogger().addHandler(_stderr)

from apache_beam.runners.worker import sdk_worker_main  # noqa: E402 - after the handler, see above

if __name__ == "__main__":
    sdk_worker_main.main(sys.argv)
