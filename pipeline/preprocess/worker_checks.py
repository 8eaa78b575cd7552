"""Before a cluster decodes anything: can every worker import this project (the same version as
the launcher) and see the input and output paths? Each failure is one line saying what to do,
instead of a task traceback from every worker after the job started.

The probe is run on every worker with `Client.run`. It is built by a factory (a nested function)
so that cloudpickle sends it by value: a function pickled by reference would need the worker to
import this very project to unpickle it, which is what is being checked.
"""
from __future__ import annotations

import hashlib
import importlib

from pipeline.errors import DataError

# The module holding the DoFn the workers unpickle.
GRAPH_MODULE = "pipeline.preprocess.graph"


def _source_digest(module) -> str:
    with open(module.__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _make_probe():
    def probe(module_name: str, paths: list[str]) -> dict:
        import hashlib
        import importlib
        import os

        try:
            module = importlib.import_module(module_name)
            with open(module.__file__, "rb") as f:
                digest, error = hashlib.sha256(f.read()).hexdigest(), None
        except Exception as err:  # noqa: BLE001 - reported to the launcher
            digest, error = None, f"{type(err).__name__}: {err}"
        return {"import_error": error, "digest": digest, "missing": [p for p in paths if not os.path.exists(p)]}

    return probe


def _workers(addresses) -> str:
    addresses = sorted(addresses)
    more = f" and {len(addresses) - 2} more" if len(addresses) > 2 else ""
    return ", ".join(addresses[:2]) + more


def check_workers(client, inputs: list[str], outputs: list[str]) -> None:
    """DataError when a worker cannot import this project, runs another version of it, or cannot
    see one of the (local) paths: `inputs` (ROOT, a file in it), `outputs` (a file the launcher
    wrote into OUT's temp folder). Remote paths (gs://, s3://) are not probed."""
    local_in = [p for p in inputs if "://" not in p]
    local_out = [p for p in outputs if "://" not in p]
    answers = client.run(_make_probe(), GRAPH_MODULE, local_in + local_out)
    broken = {w: a["import_error"] for w, a in answers.items() if a["import_error"]}
    if broken:
        worker, error = sorted(broken.items())[0]
        raise DataError(f"Dask worker(s) {_workers(broken)} cannot import this project ({error}); install it "
                        f"on the workers (pip install gender-classifier[dask], the same version) or start them "
                        f"with PYTHONPATH naming the project folder")
    ours = _source_digest(importlib.import_module(GRAPH_MODULE))
    other = [w for w, a in answers.items() if a["digest"] != ours]
    if other:
        raise DataError(f"Dask worker(s) {_workers(other)} run another version of this project "
                        f"({GRAPH_MODULE} differs from the launcher's); install this version on the workers")
    for paths, what in ((local_in, "the input"), (local_out, "the output folder")):
        blind = [w for w, a in answers.items() if set(a["missing"]) & set(paths)]
        if blind:
            missing = sorted(set(answers[blind[0]]["missing"]) & set(paths))[0]
            raise DataError(f"Dask worker(s) {_workers(blind)} cannot see {what} ({missing}); put ROOT and OUT on "
                            f"a file system every worker mounts at the same path, or use gs:// paths")
