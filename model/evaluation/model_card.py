"""`model_card.md` beside the evaluation report: what the model is, the data it was measured on,
its numbers overall and per gender and age group (with 95 % intervals, because small groups are
noisy), what it is meant for, and its limitations. Written from the report body and the records'
manifest, so it says nothing the report does not."""
from __future__ import annotations

import math
import os

from pipeline.files import write_text_atomically
from pipeline.schema import AGE_UNKNOWN_GROUP, LABEL_NAMES

MODEL_CARD_NAME = "model_card.md"
Z_95 = 1.959964  # two-sided 95 % normal quantile

INTENDED_USE = (
    "Research and teaching: reproducing transfer learning from VGG-Face on the Adience benchmark, "
    "and studying where such a classifier fails (the per-gender and per-age-group numbers above).",
    "Not for decisions about real people (access, hiring, policing, advertising, moderation), not for "
    "inferring anybody's gender identity, and not for surveillance.",
)
LIMITATIONS = (
    "Classifying sex or gender from a face is contested: the labels are two annotated classes of one "
    "benchmark (female, male), not anybody's gender identity; people outside those two classes do not "
    "exist for this model.",
    "A face classifier can work much worse for some groups (age, skin tone, ethnicity) than for others. "
    "Adience records age and gender only: gaps along skin tone or ethnicity cannot be measured here, and "
    "this model has not been audited for them.",
    "The numbers hold for faces like the evaluation data (Adience: aligned Flickr face crops, uint8 BGR, "
    "at the size under Data); other cameras, crops, lighting or populations can do worse.",
    "Groups with few faces give wide intervals: read the 95 % interval, not only the accuracy.",
    "Accuracy on the agegender_cleaned split is not comparable with published Adience results, which "
    "use the five subject-exclusive folds (`evaluate --folds`).",
)


def wilson_interval(correct: int, n: int) -> tuple[float, float] | None:
    """95 % Wilson score interval of a proportion (stays inside [0, 1], sane at 0/n and n/n)."""
    if n <= 0:
        return None
    p = correct / n
    denominator = 1 + Z_95 ** 2 / n
    centre = (p + Z_95 ** 2 / (2 * n)) / denominator
    half = Z_95 * math.sqrt(p * (1 - p) / n + Z_95 ** 2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _accuracy_cell(entry: dict) -> str:
    if not entry["n"] or entry["accuracy"] is None:
        return "–"
    low, high = wilson_interval(round(entry["accuracy"] * entry["n"]), entry["n"])
    return f"{entry['accuracy']:.3f} [{low:.3f}, {high:.3f}]"


def _split_section(split: str, m: dict) -> list[str]:
    auc = "n/a" if m["auc"] is None else f"{m['auc']:.4f}"
    lines = [f"### {split}", "",
             "| n | accuracy [95 % interval] | loss | ROC AUC |", "|---:|---|---:|---:|",
             f"| {m['n']} | {_accuracy_cell(m)} | {m['loss']:.4f} | {auc} |", ""]
    baseline = m.get("majority_baseline")
    if baseline is not None:
        lines += [f"Against always answering the more frequent class ({baseline['class']}): accuracy "
                  f"{baseline['accuracy']:.3f}.", ""]
    if m.get("one_class_predictions"):
        lines += [f"**Warning: the model answered {m['one_class_predictions']} for every face of this split.**", ""]
    lines += ["| true gender | n | accuracy (recall) [95 % interval] | precision |", "|---|---:|---|---:|"]
    for name in LABEL_NAMES:
        entry = m["by_gender"][name]
        lines.append(f"| {name} | {entry['n']} | {_accuracy_cell(entry)} | {m['precision'][name]:.3f} |")
    header = " | ".join(f"{name}: accuracy (n)" for name in LABEL_NAMES)
    lines += ["", f"| age group | n | accuracy [95 % interval] | {header} |", "|---|---:|---|" + "---|" * len(LABEL_NAMES)]
    for group, entry in m["by_age"].items():
        by_gender = " | ".join(
            "–" if not e["n"] else f"{e['accuracy']:.3f} ({e['n']})"
            for e in (entry["by_gender"][name] for name in LABEL_NAMES))
        label = "unknown age" if group == AGE_UNKNOWN_GROUP else group
        lines.append(f"| {label} | {entry['n']} | {_accuracy_cell(entry)} | {by_gender} |")
    worst = m.get("worst_age_group")
    filled = {e["accuracy"] for g, e in m["by_age"].items() if e["n"] and g != AGE_UNKNOWN_GROUP}
    if worst is not None and len(filled) == 1:
        lines += ["", f"Every age group with faces at accuracy {worst['accuracy']:.3f}."]
    elif worst is not None:
        lines += ["", f"Worst age group: **{worst['group']}**, accuracy {worst['accuracy']:.3f} (n = {worst['n']})."]
    return lines + [""] + _calibration_lines(m) + _threshold_lines(m)


def _number(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _calibration_lines(m: dict) -> list[str]:
    """ECE and Brier score overall, per true gender and per age group (by gender within it)."""
    c = m.get("calibration")
    if c is None:
        return []
    lines = [f"Calibration ({c['ece_rule']}; {c['brier_rule']}):", "",
             "| group | n | ECE | Brier |", "|---|---:|---:|---:|",
             f"| all | {c['n']} | {_number(c['ece'])} | {_number(c['brier'])} |"]
    lines += [f"| {name} | {e['n']} | {_number(e['ece'])} | {_number(e['brier'])} |"
              for name, e in c["by_gender"].items()]
    for group, e in c["by_age"].items():
        if e["n"]:
            genders = ", ".join(f"{g} {_number(x['ece'], 3)} (n={x['n']})" for g, x in e["by_gender"].items() if x["n"])
            lines.append(f"| age {group} (ECE by gender: {genders}) | {e['n']} | {_number(e['ece'])} | {_number(e['brier'])} |")
    return lines + [""]


def _threshold_lines(m: dict) -> list[str]:
    """Error rate of every group at each threshold the report looked at (the default 0.5, the one
    decided at, and those chosen on the calibration split)."""
    at = m.get("at_thresholds")
    if not at:
        return []
    keys = list(at)
    lines = ["Error rate (1 - accuracy) [95 % interval] of each group at each threshold:", "",
             "| group | " + " | ".join(f"{k} ({at[k]['threshold']:.4g})" for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]

    def row(label: str, pick) -> str:
        cells = []
        for k in keys:
            e = pick(at[k])
            if not e["n"]:
                cells.append("–")
                continue
            low, high = wilson_interval(round(e["error_rate"] * e["n"]), e["n"])
            cells.append(f"{e['error_rate']:.3f} [{low:.3f}, {high:.3f}] (n={e['n']})")
        return f"| {label} | " + " | ".join(cells) + " |"

    lines.append(row("all", lambda a: a))
    lines += [row(g, lambda a, g=g: a["by_gender"][g]) for g in LABEL_NAMES]
    for group in at[keys[0]]["by_age"]:
        if at[keys[0]]["by_age"][group]["n"]:
            lines.append(row(f"age {group}", lambda a, group=group: a["by_age"][group]))
            lines += [row(f"age {group}, {g}", lambda a, group=group, g=g: a["by_age"][group]["by_gender"][g])
                      for g in LABEL_NAMES]
    return lines + [""]


def _decision_lines(report: dict) -> list[str]:
    """Which threshold decided, where it came from, the temperature, and the calibration fit."""
    if "threshold_source" not in report:
        return []
    sources = {"default": "the default (model/contract.py)", "flag": "given to this run (`--threshold`)",
               "model": "stored in the model file"}
    lines = [f"- Decision threshold: {report['threshold']:.6g}, {sources[report['threshold_source']]}.",
             f"- Temperature: {report['temperature']['value']:.4g}, {report['temperature']['source']}."]
    fit = report.get("calibration_fit")
    if fit:
        o = fit["on_split"]
        lines.append(f"- Temperature scaling fitted on split `{fit['split']}` (n = {fit['n']}), never a reported one: "
                     f"ECE there {_number(o['ece_before'])} -> {_number(o['ece_after'])}, Brier "
                     f"{_number(o['brier_before'])} -> {_number(o['brier_after'])}.")
        if fit.get("at_bound"):
            lines.append(f"- **Warning: the temperature fit ended at a bound ({fit['temperature']:.4g}): the model "
                         f"separates `{fit['split']}` perfectly, and the temperature means nothing.**")
        for name, t in fit["thresholds"].items():
            rates = ", ".join(f"{g} {v:.3f}" for g, v in t["error_rate"].items())
            lines.append(f"- Threshold `{name}` chosen on `{fit['split']}`: {t['threshold']:.6g} (there: accuracy "
                         f"{t['accuracy']:.3f}, error rate {rates}).")
    if report.get("stored"):
        stored = report["stored"]
        what = ", ".join(f"{k} {stored[k]:.6g}" for k in ("temperature", "threshold") if k in stored)
        lines.append(f"- Stored in `{stored['model']}` by this run: {what}.")
        if "threshold_removed" in stored:
            lines.append(f"- The threshold stored before ({stored['threshold_removed']:.6g}) was removed: it was "
                         f"chosen for the scores of the previous temperature.")
    return lines


def _data_lines(report: dict, manifest) -> list[str]:
    lines = [f"- Records: `{report['records']}`"]
    if manifest is not None:
        lines += [f"- Source: `{manifest.source_root}` (layout {manifest.layout}), {manifest.found} inputs found, "
                  f"{manifest.rejected} rejected by `preprocess`",
                  f"- Images: {manifest.image_size}x{manifest.image_size}, {manifest.channel_order}, uint8"]
    for split in report["splits"]:
        counts = ", ".join(f"{report[split]['by_gender'][name]['n']} {name}" for name in LABEL_NAMES)
        lines.append(f"- Evaluated split `{split}`: {report[split]['n']} faces ({counts})")
    return lines


def model_card(report: dict, manifest=None) -> str:
    """The card's Markdown from a report body (model.evaluation.report.build_report) and, if given, the
    records' Manifest."""
    name = os.path.basename(report["model"].rstrip("/"))
    lines = [f"# Model card: {name}", "",
             "Written by `python cli.py evaluate` beside `report.json`; every number below is from that report.", "",
             "## Model", "",
             f"- File: `{report['model']}`",
             "- Gender classifier by transfer learning from VGG-Face (Parkhi, Vedaldi and Zisserman, 2015): "
             "VGG-Face's lower layers, frozen, and a small trained head.",
             f"- Input: face crops as uint8 BGR images (the model subtracts the VGG-Face mean itself). "
             f"Output: the probability of `{report['positive_class']}`; {report['decision_rule']}.",
             *_decision_lines(report),
             f"- Test-time augmentation: {report.get('tta_rule', 'none')}.",
             "", "## Data", "", *_data_lines(report, manifest), "",
             "## Metrics", "",
             f"Age groups: {', '.join(report['age_groups'])}. {report['age_group_rule']}", ""]
    for split in report["splits"]:
        lines += _split_section(split, report[split])
    lines += ["## Intended use", "", *(f"- {item}" for item in INTENDED_USE), "",
              "## Limitations and ethical considerations", "", *(f"- {item}" for item in LIMITATIONS), ""]
    return "\n".join(lines)


def write_model_card(report: dict, report_dir: str) -> str:
    """Write model_card.md into report_dir; returns its name (relative to report_dir)."""
    from pipeline.manifest import load_manifest

    text = model_card(report, load_manifest(report["records"]))
    path = os.path.join(report_dir, MODEL_CARD_NAME)
    write_text_atomically(path, text)
    return MODEL_CARD_NAME
