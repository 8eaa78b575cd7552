"""Regenerate what the README shows from a finished demo run (`make readme-assets` runs the demo,
then this): the report's plots, downsized, in docs/img/; the model card in docs/samples/; and the
README's generated blocks (a trimmed report.json, classify's table), between their markers.

    python docs/make_readme_assets.py DEMO_WORK_DIR
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
README = os.path.join(ROOT, "README.md")
IMG = os.path.join(DOCS, "img")
SAMPLES = os.path.join(DOCS, "samples")
PLOTS = ("valid_age_accuracy", "valid_confusion", "valid_roc", "valid_score_hist", "valid_reliability")
MAX_WIDTH = 640          # pixels: readable on a README page, a few tens of KB as a palette PNG
BLOCK = re.compile(r"(<!-- BEGIN generated: (?P<name>[\w.-]+) .*?-->\n)(?P<body>.*?)(<!-- END generated -->)", re.S)
# report.json keys shown in the README sample: the headline numbers and one view of each slice.
REPORT_KEYS = ("model", "records", "threshold", "threshold_source", "temperature", "positive_class", "tta",
               "splits")
SPLIT_KEYS = ("n", "accuracy", "loss", "auc", "majority_baseline", "confusion_matrix", "precision", "recall",
              "by_gender")
AGE_GROUPS_SHOWN = 2
# The calibration entry shown (the file also has the reliability bins and the per-age-group values).
CALIBRATION_KEYS = ("ece", "brier", "bins", "by_gender")


def downsize_plot(src: str, dst: str) -> None:
    """Scale to MAX_WIDTH and store as an adaptive-palette PNG (plots have few colours)."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > MAX_WIDTH:
            im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.Resampling.LANCZOS)
        im.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def compact_json(value, indent: int = 0) -> str:
    """JSON with each innermost object or list on one line: a sample one can read at a glance."""
    nested = isinstance(value, (dict, list)) and any(isinstance(v, (dict, list)) for v in
                                                     (value.values() if isinstance(value, dict) else value))
    if not nested:
        return json.dumps(value)
    pad = " " * (indent + 2)
    if isinstance(value, list):
        items = [pad + compact_json(v, indent + 2) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    items = [f"{pad}{json.dumps(k)}: {compact_json(v, indent + 2)}" for k, v in value.items()]
    return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"


def report_sample(report: dict) -> str:
    """report.json trimmed to what a reader needs to see its shape (valid JSON; the README says
    what was left out)."""
    sample = {key: report[key] for key in REPORT_KEYS}
    for split in report["splits"]:
        body = {key: report[split][key] for key in SPLIT_KEYS}
        groups = list(report[split]["by_age"])[:AGE_GROUPS_SHOWN]
        body["by_age"] = {g: report[split]["by_age"][g] for g in groups}
        body["worst_age_group"] = report[split]["worst_age_group"]
        calibration = report[split]["calibration"]
        body["calibration"] = {key: calibration[key] for key in CALIBRATION_KEYS}
        sample[split] = body
    return compact_json(sample)


def classify_sample(work: str) -> str:
    """classify's table on the demo's validation folder, as the CLI prints it: the header, two
    rows of each label, every error row, and the summary line."""
    folder = os.path.join(work, "synthetic-adience", "valid")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "classify", "-m",
                           os.path.join(work, "gender_classifier.keras"), "-i", folder],
                          capture_output=True, text=True, cwd=ROOT)
    header, *rows = proc.stdout.splitlines()
    kept = [r for label in ("female", "male") for r in [r for r in rows if r.split()[0] == label][:2]]
    kept += [r for r in rows if " error: " in r]
    summary = proc.stderr.replace("\r", "\n").strip().splitlines()[-1]
    command = f"$ python cli.py classify -m {work}/gender_classifier.keras -i {folder}"
    return "\n".join([command, header, *kept, f"… ({len(rows) - len(kept)} more rows)", summary])


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """Replace the body of each generated README block by name; every name must be found."""
    found = set()

    def body(match: re.Match) -> str:
        name = match["name"]
        if name not in blocks:
            return match[0]
        found.add(name)
        fence = "json" if name.endswith(".json") else ""
        return f"{match[1]}```{fence}\n{blocks[name]}\n```\n{match[4]}"

    text = BLOCK.sub(body, text)
    missing = set(blocks) - found
    if missing:
        raise SystemExit(f"README.md has no generated block named {', '.join(sorted(missing))}")
    return text


def main(work: str) -> None:
    report_dir = os.path.join(work, "report")
    os.makedirs(IMG, exist_ok=True)
    os.makedirs(SAMPLES, exist_ok=True)
    for name in PLOTS:
        downsize_plot(os.path.join(report_dir, f"{name}.png"), os.path.join(IMG, f"demo_{name}.png"))
    shutil.copy(os.path.join(report_dir, "model_card.md"), os.path.join(SAMPLES, "model_card.md"))
    with open(os.path.join(report_dir, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    with open(README, encoding="utf-8") as f:
        text = f.read()
    text = replace_blocks(text, {"report.json": report_sample(report), "classify-table": classify_sample(work)})
    with open(README, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {len(PLOTS)} plots to {IMG}, the model card to {SAMPLES}, and README.md's generated blocks")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
