"""`make bench`: run every bench/bench_*.py script and collect their figures into bench/RESULTS.md.

Each script measures its contestants side by side in one run and prints, as its last line, one JSON
object: {"bench": name, "rows": [{"what": ..., "images_per_s": ..., "baseline": ..., "ratio": ...,
"target": ..., "peak_rss_mb": ...}, ...], "notes": [...]} (keys other than "what" optional).
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ("what", "images_per_s", "baseline", "ratio", "target", "peak_rss_mb")


def run_script(path: str) -> dict:
    started = time.time()
    proc = subprocess.run([sys.executable, path], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    sys.stdout.write(proc.stdout)
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        return {"bench": os.path.basename(path), "rows": [], "notes": [f"FAILED (exit {proc.returncode})"]}
    result = json.loads(lines[-1])
    result["seconds"] = round(time.time() - started)
    return result


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def kept_sections(rerun: set[str]) -> list[str]:
    """The sections of the current RESULTS.md that this run does not remake (tables measured by hand,
    e.g. feature_scale_table's, which takes hours): a rerun of the rest must not erase them."""
    try:
        with open(os.path.join(HERE, "RESULTS.md")) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    sections = text.split("\n## ")[1:]
    return [f"## {body.rstrip()}\n" for body in sections if body.split()[0] not in rerun]


def main() -> int:
    scripts = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    results = [run_script(s) for s in scripts]
    out = [
        "# Benchmark results",
        "",
        f"Made by `make bench` on {datetime.date.today().isoformat()}: {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}, no GPU, Python {platform.python_version()}.",
        "Each table's figures were measured side by side in one run of its script.",
        "",
    ]
    for r in results:
        out += [f"## {r['bench']} ({r.get('seconds', '?')} s)", ""]
        out += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for row in r["rows"]:
            out.append("| " + " | ".join(fmt(row.get(c)) for c in COLUMNS) + " |")
        out += [""] + [f"- {n}" for n in r.get("notes", [])] + [""]
    out += kept_sections({r["bench"] for r in results})
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("\n".join(out))
    print(f"wrote {os.path.join(HERE, 'RESULTS.md')}")
    return 0 if all(r["rows"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
