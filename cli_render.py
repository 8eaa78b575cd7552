"""How the commands look: the typed progress events of every command drawn as bars and lines, the
summaries printed after them, and the program's name as the user invoked it. cli.py parses the
arguments and calls the library; this module only renders what comes back."""
from __future__ import annotations

import builtins
import os
import sys

# How library messages and the commands above name the program. The CLI renders it as invoked.
CANONICAL_PROG = "python cli.py"
_prog = CANONICAL_PROG


def invoked_as(argv0: str) -> str:
    """The program's name as the user typed it: `python cli.py` when run as the script (or with
    `python -m cli`), the console script's name (`gender-classifier`) when installed."""
    name = os.path.basename(argv0)
    if not name or name.endswith(".py") or name in ("-c", "-m"):
        return CANONICAL_PROG
    return os.path.splitext(name)[0]


def print(*values, **kwargs) -> None:  # noqa: A001 - shadows the builtin for this module on purpose
    """Every line this module prints goes through here, so messages from `pipeline`/`model` and
    the commands above (which say `python cli.py …`) name the program as it was invoked."""
    if _prog != CANONICAL_PROG:
        values = tuple(str(v).replace(CANONICAL_PROG, _prog) for v in values)
    builtins.print(*values, **kwargs)




def program() -> str:
    """The program's name as invoked (CANONICAL_PROG until set_program)."""
    return _prog


def set_program(argv0: str) -> None:
    """Name the program as `argv0` invoked it in every line printed from now on."""
    global _prog
    _prog = invoked_as(argv0)


# ---------------------------------------------------------------- convert
def render_convert_event(event) -> None:
    from model.progress import Reading

    if isinstance(event, Reading):
        print(f"reading {event.path} …", flush=True)
    else:
        print(f"writing {event.path} ({event.params:,} parameters) …", flush=True)



# ---------------------------------------------------------------- preprocess
class PreprocessBar:
    """Renders preprocess's typed events (pipeline/preprocess/events.py) as one tqdm bar on stderr."""

    def __init__(self):
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        from pipeline.preprocess import events

        if isinstance(event, events.Started):
            # disable=None: a bar on a terminal only, as the scoring bars (a log gets the summary).
            self.bar = tqdm(total=event.total, unit="img", desc="preprocess", file=sys.stderr, dynamic_ncols=True,
                            disable=None)
        elif isinstance(event, events.Advanced) and self.bar is not None:
            self.bar.update(event.done - self.bar.n)
        elif isinstance(event, events.Committed):
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def print_preprocess_summary(s) -> None:
    """What a finished `preprocess` did: counts per split, rejects and their reasons, what it replaced."""
    folds = s.layout == "adience-folds"
    inputs = "fold-file rows" if folds else "files"
    print(f"wrote {s.written} records from {s.found} {inputs} in {s.root} to {s.out} "
          f"({s.runner}, {s.seconds:.1f} s, {s.images_per_second:.0f} images/s)")
    if folds:
        users = s.manifest.extra.get("users_per_fold", {})
        print(f"  layout adience-folds: five subject-exclusive folds ({sum(users.values())} user_ids, "
              f"none in two folds)")
    if s.worker_processes > 1:
        print(f"  work spread over {s.worker_processes} worker processes: "
              f"{' + '.join(str(n) for n in s.files_per_worker)} files")
    for split, info in s.manifest.splits.items():
        labels = ", ".join(f"{n} {name}" for name, n in info.by_label.items())
        users = f", {s.manifest.extra['users_per_fold'][split]} user_ids" if folds else ""
        print(f"  {split}: {info.count} images ({labels}{users}) in {len(info.shards)} shards")
    if s.rejected:
        reasons = ", ".join(f"{n} {reason}" for reason, n in s.reject_reasons.items())
        print(f"  rejected: {s.rejected} ({reasons}); listed in {s.rejects_path}")
    else:
        print("  rejected: 0")
    for folder in s.skipped_folders:
        print(f"  skipped folder {folder}: its name is not <age>_<F|M> (its files are listed as rejects)")
    if s.unlisted:
        print(f"  unlisted: {len(s.unlisted)} file(s) under aligned/ that no fold row names (not part of "
              f"the protocol, not written; listed in manifest.json under unlisted_files)")
    if s.replaced:
        print(f"  replaced {len(s.replaced)} files of the previous output")
    if s.stale_removed:
        print(f"  removed {len(s.stale_removed)} temp folder(s) that killed runs left in {s.out} "
              f"({s.stale_bytes / 2**20:,.1f} MiB): {', '.join(s.stale_removed)}")
    if s.busy_temp:
        print(f"  left {', '.join(s.busy_temp)} alone: another preprocess is writing into {s.out} right now")


# ---------------------------------------------------------------- train
class TrainRenderer:
    """Renders training's typed events (model/training/events.py): the set-up, a bar per epoch (tqdm
    on a terminal, a plain line every ~5 % of the epoch otherwise), checkpoints, validation, warnings,
    the outputs. One method per event type."""

    def __init__(self):
        self.bar = None
        self.tty = sys.stderr.isatty()
        self.printed_at = 0          # the last step a plain progress line was printed for

    def __call__(self, event) -> None:
        getattr(self, f"on_{type(event).__name__}")(event)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _say(self, message: str) -> None:
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        else:
            print(message, flush=True)

    def on_Setup(self, e) -> None:
        from model.defaults import AUTO_CALL_SECONDS
        from model.runtime import NO_GPU_NOTE

        who = (f", this is {e.task_type} {e.task_id}{' (chief)' if e.is_chief else ''}" if e.workers > 1 else "")
        print(f"devices: {', '.join(e.devices) if e.devices else NO_GPU_NOTE}")
        print(f"strategy: {e.strategy}, {e.replicas} replica(s) on {e.workers} worker(s){who}; "
              f"precision: {e.precision}{' with loss scaling' if e.loss_scaling else ''}; "
              f"XLA {'on' if e.jit else 'off'}; steps per call: "
              f"{e.steps_per_call if e.steps_per_call else f'auto (about {AUTO_CALL_SECONDS:g} s of steps)'}")
        if e.train_splits != ("train",):
            print(f"splits: training on {'+'.join(e.train_splits)}, validating on {'+'.join(e.valid_splits)}")
        print(f"data: {e.train_count} training / {e.valid_count} validation images ({e.image_size}x{e.image_size}); "
              f"batch {e.per_replica_batch} per replica = {e.global_batch} global, "
              f"{'' if e.steps_exact else 'about '}{e.steps_per_epoch} steps per epoch; "
              f"augmentation {f'on ({e.augment_on})' if e.augment else 'off'}")
        if e.memory == "high":
            print(f"memory: high: caching {e.memory_bytes / 2**20:,.1f} MiB of decoded images in RAM")
        else:
            print("memory: low: streaming the records from disk")
        print(f"model: {e.trainable_params:,} trainable, {e.frozen_params:,} frozen parameters; "
              f"Adam, learning rate {e.learning_rate:g}; {e.epochs} epoch(s)")
        source = ("from the checkpoint's statistics" if e.stats_images is None
                  else f"max {e.feature_max:.3g}, over {e.stats_images} training images")
        what = "standardized per feature inside the model" if e.head == "standardized" else "fed raw to the original head"
        print(f"features: {e.cut_layer} RMS {e.feature_rms:.3g} ({source}); {what}")
        if e.original_head_unstable:
            print(f"warning: the original head trains on the raw {e.cut_layer} features, and on features "
                  f"this large (RMS {e.feature_rms:.3g}) its losses are huge and its training unstable; "
                  f"the default --head standardized trains on any scale")
        print(f"checkpoints: {e.checkpoint_dir}", flush=True)

    def on_LinearStartFitted(self, e) -> None:
        print(f"linear start: logistic regression on the standardized features of {e.images} training images "
              f"({e.features:,} each), regularization {e.strength:g} chosen by 5-fold cross-validation on them "
              f"(held-out accuracy {e.cv_accuracy:.2%}); fitted in {e.seconds:.1f} s", flush=True)

    def on_StartValidated(self, e) -> None:
        print(f"before training: the {e.start} start gives {e.val_accuracy:.2%} on validation "
              f"({e.val_count} images, loss {e.val_loss:.4f})", flush=True)

    def on_Resumed(self, e) -> None:
        if e.finished:
            print(f"resumed from {e.checkpoint}: training already complete ({e.epoch - 1} epochs); "
                  f"writing the outputs again (delete the checkpoint directory to train afresh)", flush=True)
        else:
            print(f"resumed from {e.checkpoint}: epoch {e.epoch}, after step {e.step} "
                  f"(weights, optimizer state and data position restored)", flush=True)
        self.printed_at = e.step

    def on_StepsDone(self, e) -> None:
        from tqdm import tqdm

        total = e.steps_per_epoch
        stats = f"loss {e.loss:.4f}, acc {e.accuracy:.2%}, {e.images_per_s:,.0f} img/s"
        if self.bar is None and self.tty:
            self.bar = tqdm(total=total, initial=e.step - e.steps, desc=f"epoch {e.epoch}/{e.epochs}",
                            unit="step", file=sys.stderr, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.total = max(self.bar.total, e.step)
            self.bar.set_postfix_str(stats, refresh=False)
            self.bar.update(e.steps)
        elif e.step - e.steps == 0 or e.step // max(1, total // 20) > self.printed_at // max(1, total // 20) \
                or e.step >= total:
            print(f"epoch {e.epoch}/{e.epochs} step {e.step}/{total}: {stats}", flush=True)
            self.printed_at = e.step

    def on_CheckpointSaved(self, e) -> None:
        if e.path:
            self._say(f"checkpoint {e.path} (epoch {e.epoch}, step {e.step})")

    def on_EpochEnd(self, e) -> None:
        self._close_bar()
        self.printed_at = 0
        print(f"epoch {e.epoch}: loss {e.loss:.4f}, accuracy {e.accuracy:.2%} | validation "
              f"({e.val_count} images): loss {e.val_loss:.4f}, accuracy {e.val_accuracy:.2%} | "
              f"{e.images_per_s:,.0f} img/s, {e.seconds:.1f} s", flush=True)

    def on_Collapse(self, e) -> None:
        advice = ("retrain with the default --head standardized" if e.head == "original"
                  else "lower --learning-rate, or check the data with `python cli.py evaluate`")
        print(f"warning: epoch {e.epoch}: {e.reason}: the model answers one class for everyone "
              f"(collapsed); {advice}", flush=True)

    def on_Saved(self, e) -> None:
        self._close_bar()
        print(f"model: {e.output}\nTF Serving export: {e.savedmodel}\nhistory: {e.history_csv}\n"
              f"TensorBoard logs: {e.log_dir}\ncheckpoints: {e.checkpoint_dir}", flush=True)

    def on_FoldStart(self, e) -> None:
        print(f"\n== fold {e.fold}: train on the other folds, validate on {e.valid_split} -> {e.output}", flush=True)

    def on_FoldSkipped(self, e) -> None:
        about = f", validation accuracy {e.val_accuracy:.2%}" if e.val_accuracy is not None else ""
        print(f"\n== fold {e.fold}: already trained ({e.epochs} epochs{about}); {e.output} kept (delete its "
              f"checkpoint directory {e.checkpoint_dir} to train it again)", flush=True)



# ---------------------------------------------------------------- evaluate and classify
class ScoringBars:
    """Renders scoring's typed events (model/progress.py): one tqdm bar on stderr per split of
    `evaluate` or per `classify` run (its total arrives once the inputs are counted; faces found as
    postfix), and a line per fold of `evaluate --folds`."""

    def __init__(self):
        self.bars: dict = {}

    def __call__(self, event) -> None:
        from tqdm import tqdm

        from model import progress as p

        bar = self.bars.get(getattr(event, "name", None))
        if isinstance(event, p.Started):
            self.bars[event.name] = tqdm(total=event.total, desc=event.name, unit=event.unit, file=sys.stderr,
                                         dynamic_ncols=True, leave=True, disable=None)
        elif isinstance(event, p.TotalKnown) and bar is not None:
            bar.total = event.total
            bar.refresh()
        elif isinstance(event, p.Advanced) and bar is not None:
            if event.faces is not None:
                bar.set_postfix(faces=event.faces, refresh=False)
            bar.update(event.count)
        elif isinstance(event, p.Ended) and bar is not None:
            self.bars.pop(event.name).close()
        elif isinstance(event, p.FoldEvaluating):
            print(f"fold {event.fold}: {event.model}", file=sys.stderr, flush=True)


def evaluate_summary_lines(body: dict, report_dir: str) -> list[str]:
    """`evaluate`: a few lines for the terminal: accuracy and loss per split, the worst age group, where the report is."""
    from model.evaluation import report
    from pipeline.schema import AGE_GROUP_NAMES

    lines = []
    for split in body["splits"]:
        m = body[split]
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.4f}"
        base = m["majority_baseline"]
        lines.append(f"{split}: n={m['n']}  accuracy={m['accuracy']:.4f} (always {base['class']}: "
                     f"{base['accuracy']:.4f})  loss={m['loss']:.4f}  auc={auc}")
        if m.get("one_class_predictions"):
            lines.append(f"  warning: every prediction is {m['one_class_predictions']}: the model has collapsed "
                         f"to one class (retrain with the default `head` standardized, or a lower `learning_rate`)")
        worst = m.get("worst_age_group")
        filled = [e["accuracy"] for g, e in m["by_age"].items() if e["n"] and g in AGE_GROUP_NAMES]
        if worst is not None and len(set(filled)) == 1:
            lines.append(f"  every age group ({len(filled)} with examples) at accuracy {worst['accuracy']:.4f}")
        elif worst is not None:
            lines.append(f"  worst age group: {worst['group']} accuracy={worst['accuracy']:.4f} (n={worst['n']})")
        lines += _calibration_summary(m)
    fit = body.get("calibration_fit")
    if fit:
        o = fit["on_split"]
        lines.append(f"temperature fitted on {fit['split']} (n={fit['n']}): T={fit['temperature']:.4g}, ECE there "
                     f"{o['ece_before']:.4f} -> {o['ece_after']:.4f}, Brier {o['brier_before']:.4f} -> {o['brier_after']:.4f}")
        if fit["at_bound"]:
            lines.append("  warning: the fit ended at a bound: the model separates that split perfectly; "
                         "the temperature means nothing")
    if "threshold_source" in body:
        lines.append(f"threshold {body['threshold']:.6g} ({body['threshold_source']}); temperature "
                     f"{body['temperature']['value']:.4g} ({body['temperature']['source']})")
    for key, value in (body.get("stored") or {}).items():
        if key in ("temperature", "threshold"):
            lines.append(f"stored {key} {value:.6g} in {body['stored']['model']}")
        if key == "threshold_removed":
            lines.append(f"removed the threshold {value:.6g} stored for the previous temperature from "
                         f"{body['stored']['model']}")
    lines.append(f"test-time augmentation: {body.get('tta', 'none')}")
    lines.append(f"report: {os.path.join(report_dir, report.REPORT_NAME)} (plots and {report.PREDICTIONS_NAME} beside it)")
    return lines


def _calibration_summary(m: dict) -> list[str]:
    """ECE and Brier of a split and each gender's error rate at each threshold the report looked at."""
    c = m.get("calibration")
    if c is None:
        return []
    lines = [f"  calibration: ECE={c['ece']:.4f} ({c['bins']} bins)  Brier={c['brier']:.4f}"]
    for key, at in (m.get("at_thresholds") or {}).items():
        rates = "  ".join(f"{g}={e['error_rate']:.4f}" for g, e in at["by_gender"].items() if e["n"])
        lines.append(f"  error rate at {key} ({at['threshold']:.4g}): {rates}")
    return lines


def cv_summary_lines(body: dict, report_dir: str) -> list[str]:
    """The terminal summary of evaluate --folds: one line per fold, the headline, the worst age group."""
    from model.evaluation.crossval import CV_REPORT_NAME
    from pipeline.folds import FOLD_SPLITS
    from pipeline.schema import AGE_UNKNOWN_GROUP

    lines = [f"{f['split']}: n={f['n']}  accuracy={f['accuracy']:.4f}  loss={f['loss']:.4f}  "
             f"auc={'n/a' if f['auc'] is None else format(f['auc'], '.4f')}" for f in body["folds"]]
    lines.append(body["summary"])
    for key in ("loss", "auc"):
        s = body[key]
        if s["mean"] is not None:
            spread = "" if s["std"] is None else f" ± {s['std']:.4f}"
            lines.append(f"  {key}: {s['mean']:.4f}{spread} over {s['n_folds']} folds")
    pooled = body["pooled"]
    lines.append(f"  pooled over all {pooled['n']} faces: accuracy {pooled['accuracy']:.4f}")
    filled = [(g, e) for g, e in body["by_age"].items() if e["n"] and g != AGE_UNKNOWN_GROUP]
    if filled:
        g, e = min(filled, key=lambda item: (item[1]["pooled_accuracy"], -item[1]["n"]))
        spread = "" if e["std_accuracy"] is None else f" ± {e['std_accuracy']:.4f}"
        lines.append(f"  worst age group (pooled): {g} accuracy={e['pooled_accuracy']:.4f} (n={e['n']}; "
                     f"mean over folds {e['mean_accuracy']:.4f}{spread})")
    lines.append(f"test-time augmentation: {body.get('tta', 'none')}")
    lines.append(f"report: {os.path.join(report_dir, CV_REPORT_NAME)} (per-fold reports in "
                 f"{os.path.join(report_dir, FOLD_SPLITS[0])} … {FOLD_SPLITS[-1]})")
    return lines
