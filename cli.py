"""gender-classifier: the one command-line entry. Parses arguments and calls `pipeline` and `model`.

Every command maps bad input (a DataError or ModelError raised below it) to one line on stderr
and exit status 2; anything else is a bug and keeps its traceback.

It reads in sections, one per command (its parser, then `cmd_*`), then the demo and the entry
point (logging, Ctrl-C). How the commands look (progress bars, summaries, the program's name as
invoked) is cli_render.py's.
"""
# Over 600 lines: six commands' parsers and their calls into the library, one section each; the
# renderers are cli_render.py's.
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from typing import Iterator

from cli_render import (PreprocessBar, ScoringBars, TrainRenderer, cv_summary_lines, evaluate_summary_lines,  # noqa: A004
                        print, print_preprocess_summary, program, render_convert_event, set_program)
from pipeline.schema import DEFAULT_IMAGE_SIZE

EXIT_BAD_INPUT = 2


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _float_in(low: float, high: float = float("inf"), low_open: bool = False, high_open: bool = True):
    """An argparse type: a finite float in the interval (inf and nan are refused by the parser)."""
    import math

    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if (not math.isfinite(value) or value < low or (low_open and value == low) or value > high
                or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text}")
        return value

    return parse


# Library names of settings whose flag's dest differs (TrainConfig and the library's parameters).
_FIELD_DESTS = {"records": "input", "checkpoint_every_steps": "checkpoint_every", "model_path": "model",
                "records_dir": "input", "report_dir": "report_dir", "root": "input", "out": "output"}


def in_flags(message: str, parser: argparse.ArgumentParser, command: str) -> str:
    """The library's message with each `setting` it names shown as the flag of `command` that sets it
    (e.g. `batch_size` -> -b1/--batch-size); names that are no flag of the command stay as written."""
    import re

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = {a.dest: "/".join(a.option_strings) for a in sub._actions if a.option_strings}

    def flag(match: re.Match) -> str:
        name = match.group(1)
        return flags.get(_FIELD_DESTS.get(name, name), flags.get(name, match.group(0)))

    return re.sub(r"`([a-z_][a-z0-9_]*)`", flag, message)


def _check_outputs(outputs, inputs) -> None:
    """Outputs vs inputs before any work (pipeline/outputs.py): DataError -> one line, exit 2."""
    from pipeline.outputs import check_outputs

    check_outputs(outputs, inputs)


# ---------------------------------------------------------------- convert (issue: foundation)
def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert VGG_FACE.t7 to a Keras .keras model")
    p.add_argument("-w", "--weights", required=True, help="path to VGG_FACE.t7")
    p.add_argument("-o", "--output", required=True, help="output .keras file")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from model.network.backbone import convert_t7_to_keras

    _check_outputs([(args.output, "file", "-o")], [(args.weights, "-w")])
    summary = convert_t7_to_keras(args.weights, args.output, progress=render_convert_event)
    w = summary.widths
    print(f"converted {args.weights} -> {summary.output} "
          f"({summary.bytes_written / 1e6:,.1f} MB) in {summary.seconds:.1f} s")
    print(f"  conv widths {','.join(map(str, w.conv))}; fc6 {w.fc6}, fc7 {w.fc7}, "
          f"fc8 {w.fc8} classes; {summary.params:,} parameters")
    print(f"  input: uint8 {DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE}x3 BGR (the model subtracts the VGG-Face mean itself)")
    return 0


# ---------------------------------------------------------------- preprocess
def add_preprocess_parser(sub) -> None:
    p = sub.add_parser(
        "preprocess", help="Beam job: Adience folders -> sharded TFRecords",
        description="Decode and resize every face once, in parallel on any Beam runner, into sharded "
                    "TFRecords of uint8 BGR images plus manifest.json and rejects.jsonl. Options not "
                    "listed here go to Beam's PipelineOptions (e.g. --runner dask "
                    "--dask_client_address tcp://HOST:8786 for a Dask cluster, or --runner=DataflowRunner "
                    "--project=... --region=... --temp_location=gs://...); the default is the "
                    "DirectRunner on every local core.")
    p.add_argument("-i", "--input", required=True, metavar="ROOT",
                   help="Adience root (local, gs://, s3://): agegender_cleaned's aligned/<age>_<F|M>/ and "
                        "valid/<age>_<F|M>/, or the official distribution's fold_0_data.txt … fold_4_data.txt "
                        "with aligned/<user_id>/")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="records folder to write")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help=f"side of the square output images (default {DEFAULT_IMAGE_SIZE})")
    p.add_argument("--train-shards", type=int, default=None,
                   help="number of training shards (default: about 128 MB of pixels each, at least 2)")
    p.add_argument("--valid-shards", type=int, default=None, help="number of validation shards (default: likewise)")
    from pipeline.schema import LAYOUTS

    p.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto",
                   help="auto (default): adience-folds when ROOT holds fold_K_data.txt files (splits fold0 … "
                        "fold4, the 5-fold protocol), else aligned-valid (splits train, valid)")
    p.add_argument("--fold-shards", type=int, default=None,
                   help="number of shards per fold, adience-folds layout (default: about 128 MB of pixels each, "
                        "at least 2)")
    p.add_argument("--overwrite", action="store_true", help="replace the records already in OUT")
    p.set_defaults(func=cmd_preprocess)


def cmd_preprocess(args, beam_args: list[str]) -> int:
    from pipeline.preprocess.job import run_preprocess

    _check_outputs([(args.output, "dir", "-o")], [(args.input, "-i")])
    bar = PreprocessBar()
    try:
        s = run_preprocess(args.input, args.output, image_size=args.image_size,
                           train_shards=args.train_shards, valid_shards=args.valid_shards,
                           beam_args=beam_args, overwrite=args.overwrite, progress=bar,
                           layout=args.layout, fold_shards=args.fold_shards)
    finally:
        bar.close()
    print_preprocess_summary(s)
    return 0


# ---------------------------------------------------------------- train
def _steps_per_call(text: str) -> int | None:
    """--steps-per-call: a positive whole number, or auto (None)."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, or auto; got {text!r}")
    return value


# Over 60 lines on purpose: the list of train's flags, one statement each.
def add_train_parser(sub) -> None:
    from model.defaults import (AUTO_CALL_SECONDS, DEFAULT_CHECKPOINT_EVERY, DEFAULT_CUT_LAYER, DEFAULT_DENSE_UNITS,
                                DEFAULT_DROPOUT, DEFAULT_FREEZE_THROUGH, DEFAULT_HEAD, DEFAULT_HEAD_INIT,
                                DEFAULT_LEARNING_RATE, DEFAULT_STATS_IMAGES, HEAD_INITS, HEADS, JIT_CHOICES, PLACEMENTS,
                                PRECISIONS, STRATEGIES)

    p = sub.add_parser(
        "train", help="train the gender classifier on preprocessed records",
        description="Fine-tune a gender classifier on VGG-Face from the records `preprocess` wrote. "
                    "Killed and rerun with the same command, it resumes from its last checkpoint. "
                    "Several machines: run the same command on each with TF_CONFIG set.")
    p.add_argument("-w", "--weights", required=True, help="VGG_FACE.t7, or the .keras written by convert")
    p.add_argument("-i", "--input", required=True, help="records directory written by preprocess")
    p.add_argument("-o", "--output", required=True,
                   help="the trained model (.keras); the SavedModel export, history CSV and logs go beside it")
    p.add_argument("-e", "--epochs", type=int, default=1, help="epochs to train (default 1)")
    p.add_argument("-b1", "--batch-size", type=int, default=32,
                   help="training batch size PER REPLICA (default 32; global = this x replicas)")
    p.add_argument("-b2", "--valid-batch-size", type=int, default=32,
                   help="validation batch size per replica (default 32)")
    p.add_argument("-m", "--memory", choices=("low", "high"), default="low",
                   help="low: stream the records from disk (default); high: cache the decoded images in RAM")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="flip/rotate/shift/zoom/brightness the training images (default on)")
    p.add_argument("--cut-layer", default=DEFAULT_CUT_LAYER,
                   help=f"VGG-Face layer the head sits on (default {DEFAULT_CUT_LAYER})")
    p.add_argument("--freeze-through", default=DEFAULT_FREEZE_THROUGH,
                   help=f"layers up to this one are not trained (default {DEFAULT_FREEZE_THROUGH}; 'none')")
    p.add_argument("--head", choices=HEADS, default=DEFAULT_HEAD,
                   help="standardized (default): the cut layer's features flattened and standardized (each "
                        "value by its own training-image statistics, saved in the model), then Dropout, Dense(relu), "
                        "Dense(sigmoid) — trains on VGG-Face's real feature scale; original: the seed's head "
                        "(Dropout, Flatten, linear Dense, Dense(sigmoid)) on the raw features")
    p.add_argument("--head-init", choices=HEAD_INITS, default=DEFAULT_HEAD_INIT,
                   help="how the standardized head starts: probe (default): as a logistic regression fitted on "
                        "the --stats-images training images' features (training starts where a linear probe "
                        "ends); random: Glorot-random weights. --head original always starts random")
    p.add_argument("--stats-images", type=int, default=DEFAULT_STATS_IMAGES,
                   help=f"training images the standardization statistics come from (default {DEFAULT_STATS_IMAGES})")
    p.add_argument("--dense-units", type=int, default=DEFAULT_DENSE_UNITS,
                   help=f"units of the head's hidden layer (default {DEFAULT_DENSE_UNITS})")
    p.add_argument("--dropout", type=_float_in(0.0, 1.0), default=DEFAULT_DROPOUT, help=f"head dropout (default {DEFAULT_DROPOUT})")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 on GPUs of compute capability >= 8.0, fp16 on 7.x, float32 on CPU")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="auto: multiworker when TF_CONFIG names a cluster or srun runs several tasks (SLURM), "
                        "mirrored on several GPUs, else default")
    p.add_argument("--jit", choices=JIT_CHOICES, default="auto",
                   help="compile the training step with XLA: auto (default) = on with a GPU, off on a CPU")
    p.add_argument("--augment-on", choices=PLACEMENTS, default="auto",
                   help="where augmentation runs: host (the tf.data pipeline), device (inside the training step, "
                        "on the accelerator), auto (default) = device with a GPU, else host")
    p.add_argument("--steps-per-call", type=_steps_per_call, default=None, metavar="N|auto",
                   help=f"training steps per tf.function call (one host sync per call): auto (default) sizes "
                        f"calls to about {AUTO_CALL_SECONDS:g} s of steps; a checkpoint always ends a call")
    p.add_argument("--checkpoint-dir", default=None, help="default: <output without .keras>.ckpt")
    p.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY,
                   help=f"save a checkpoint every this many steps, and at each epoch end "
                        f"(default {DEFAULT_CHECKPOINT_EVERY})")
    p.add_argument("--learning-rate", type=_float_in(0.0, low_open=True), default=DEFAULT_LEARNING_RATE,
                   help=f"Adam learning rate (default {DEFAULT_LEARNING_RATE:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of the head's initialization, dropout, "
                                                        "shuffling and augmentation (default 0)")
    p.add_argument("--log-dir", default=None, help="TensorBoard logs (default: <output without .keras>_logs)")
    folds = p.add_mutually_exclusive_group()
    folds.add_argument("--val-fold", type=int, default=None, metavar="K",
                       help="records of the official folds (preprocess --layout adience-folds): train on the "
                            "four other folds, validate on fold K (0-4)")
    folds.add_argument("--folds", action="store_true",
                       help="the 5-fold cross-validation: for each K train <output stem>_foldK.keras on the other "
                            "folds, validating on fold K; a rerun skips finished folds and resumes the "
                            "interrupted one; then `evaluate --folds -m OUTPUT`")
    p.set_defaults(func=cmd_train)


class _DropFoldRetracing(logging.Filter):
    """Each fold has its own model, hence new step functions: TensorFlow's "triggered tf.function
    retracing" warning is expected with --folds and says nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _train_folds(config) -> int:
    from model.training.folds import train_folds

    quiet = _DropFoldRetracing()
    logging.getLogger("tensorflow").addFilter(quiet)
    try:
        summary = train_folds(config, progress=TrainRenderer())
    finally:
        logging.getLogger("tensorflow").removeFilter(quiet)
    print("\n== cross-validation (training)")
    for row in summary["folds"]:
        state = "kept" if row["skipped"] else ("resumed" if row["resumed"] else "trained")
        acc = row.get("val_accuracy")
        print(f"  fold {row['fold']}: validation on {row['valid_split']}: accuracy "
              f"{'n/a' if acc is None else format(acc, '.4f')} ({state}) {row['model']}")
    print(summary["summary"])
    if "path" in summary:
        print(f"summary: {summary['path']}; full reports: python cli.py evaluate --folds -m {config.output} "
              f"-i {config.records}")
    return 0


def cmd_train(args) -> int:
    from model.training import TrainConfig, train

    config = TrainConfig(
        weights=args.weights, records=args.input, output=args.output, epochs=args.epochs,
        batch_size=args.batch_size, valid_batch_size=args.valid_batch_size, memory=args.memory,
        augment=args.augment, cut_layer=args.cut_layer, freeze_through=args.freeze_through,
        dense_units=args.dense_units, dropout=args.dropout, precision=args.precision, strategy=args.strategy,
        checkpoint_dir=args.checkpoint_dir, learning_rate=args.learning_rate, seed=args.seed,
        checkpoint_every_steps=args.checkpoint_every, log_dir=args.log_dir, val_fold=args.val_fold,
        head=args.head, head_init=args.head_init, stats_images=args.stats_images, jit=args.jit, augment_on=args.augment_on,
        steps_per_call=args.steps_per_call)
    if args.folds:
        return _train_folds(config)
    result = train(config, progress=TrainRenderer())
    if not result.is_chief:
        print("worker done; the chief writes the outputs")
    # Every worker prints it: equal digests = identical weights everywhere.
    print(f"final weights digest: {result.weights_digest}")
    return 0


# ---------------------------------------------------------------- evaluate
def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="batch evaluation report with per-age accuracy and plots",
                       description="Score every record of a split with a trained classifier and write "
                                   "report.json, predictions.csv and plots (ROC, confusion matrix, accuracy "
                                   "per age group and gender, score histograms).")
    p.add_argument("-m", "--model", required=True, help="trained classifier (.keras written by train)")
    p.add_argument("-i", "--input", required=True, help="records directory written by preprocess")
    p.add_argument("--split", default=None,
                   help="valid (default), train, all, or a fold of the official folds layout (fold0 … fold4)")
    p.add_argument("--folds", action="store_true",
                   help="the 5-fold cross-validation: -m is the -o given to `train --folds`; fold K's model "
                        "is evaluated on fold K, one report per fold in REPORT_DIR/foldK/ and the aggregate "
                        "(mean ± sample std across folds) in REPORT_DIR/cv_report.json")
    p.add_argument("--report-dir", default=None,
                   help="where the report goes (default: <model stem>_report beside the model)")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="batch size per device (default 64)")
    from model.defaults import STRATEGIES
    from pipeline.schema import MEMORY_MODES

    p.add_argument("--memory", choices=MEMORY_MODES, default="low",
                   help="low: stream the records (default); high: decode them into RAM first")
    p.add_argument("--strategy", choices=[s for s in STRATEGIES if s != "multiworker"], default="auto",
                   help="auto (default): mirrored over several local GPUs, else one device")
    p.add_argument("--threshold", type=_float_in(0.0, 1.0, high_open=False), default=None, metavar="T",
                   help="decide male when score > T (default: the threshold stored in the model, else 0.5)")
    p.add_argument("--calibrate-on", default=None, metavar="SPLIT",
                   help="fit a temperature (Guo et al. 2017) and choose the thresholds that equalize the genders' "
                        "error rates and that maximize accuracy on SPLIT, never a reported split; the report's "
                        "scores are then temperature-scaled")
    p.add_argument("--store-calibration", action="store_true",
                   help="rewrite -m (and the SavedModel beside it) with the temperature fitted by --calibrate-on")
    p.add_argument("--store-threshold", default=None, metavar="equal_error|max_accuracy|T",
                   help="rewrite -m (and the SavedModel beside it) with this decision threshold, which classify "
                        "and the SavedModel's label then use; a chosen one needs --store-calibration")
    _add_tta(p)
    p.set_defaults(func=cmd_evaluate)


def _add_tta(p: argparse.ArgumentParser) -> None:
    """--tta of evaluate and classify (the modes and why there is no 10-crop: model/tta.py)."""
    from model.tta import DEFAULT_TTA, TTA_MODES

    p.add_argument("--tta", choices=TTA_MODES, default=DEFAULT_TTA,
                   help="test-time augmentation: none (default): each face scored once; flip: the mean of the "
                        "male probabilities of the face and its mirror image (one model call on both, about "
                        "twice the compute); recorded in the output")


def _evaluate_folds(args) -> int:
    from model.evaluation.crossval import evaluate_folds
    from model.evaluation.report import default_report_dir

    if args.threshold is not None or args.calibrate_on or args.store_calibration or args.store_threshold:
        return _fail("--folds decides at each fold model's own threshold; drop --threshold, --calibrate-on "
                     "and --store-* (calibrate one model at a time)")
    if args.split is not None:
        return _fail("--folds evaluates fold K's model on fold K for every K; drop --split "
                     "(or drop --folds and give -m one model with --split foldK)")
    report_dir = args.report_dir or default_report_dir(args.model)
    quiet = _DropFoldRetracing()
    logging.getLogger("tensorflow").addFilter(quiet)
    try:
        body = evaluate_folds(args.model, args.input, report_dir, batch_size=args.batch_size,
                              memory=args.memory, strategy=args.strategy, progress=ScoringBars(), tta=args.tta)
    except OSError as err:
        return _fail(f"cannot write the report to {report_dir} ({err.strerror or err}); pass a writable --report-dir")
    finally:
        logging.getLogger("tensorflow").removeFilter(quiet)
    print("\n".join(cv_summary_lines(body, report_dir)))
    return 0


def cmd_evaluate(args) -> int:
    from model.evaluation.evaluate import evaluate
    from model.evaluation.report import check_report_dir, default_report_dir, write_report

    report_dir = args.report_dir or default_report_dir(args.model)
    _check_outputs([(report_dir, "dir", "--report-dir")], [(args.model, "-m"), (args.input, "-i")])
    check_report_dir(report_dir)     # before any evaluation
    if args.folds:
        return _evaluate_folds(args)
    evaluation = evaluate(args.model, args.input, split=args.split or "valid", batch_size=args.batch_size,
                          memory=args.memory, strategy=args.strategy, progress=ScoringBars(), tta=args.tta,
                          threshold=args.threshold, calibrate_on=args.calibrate_on,
                          store_calibration=args.store_calibration, store_threshold=args.store_threshold)
    try:
        report = write_report(evaluation, report_dir)
    except OSError as err:
        return _fail(f"cannot write the report to {report_dir} ({err.strerror or err}); pass a writable --report-dir")
    print("\n".join(evaluate_summary_lines(report, report_dir)))
    return 0


# ---------------------------------------------------------------- classify
def add_classify_parser(sub) -> None:
    from model.inference.faces.detect import DEFAULT_MIN_CONFIDENCE, DEFAULT_MIN_FACE
    from model.inference.output import OUTPUT_FORMATS
    from model.inference.prepare import FACE_MODES

    p = sub.add_parser("classify", help="classify the faces in image files, folders or lists of paths",
                       description="Classify faces as female/male, one row per face, written as they are "
                                   "scored. PATH: an image, a folder (searched recursively for jpg jpeg png bmp "
                                   "gif tif tiff webp) or a text file listing paths (one per line, # comments). "
                                   "Exit status 1 when any file could not be classified: unreadable, or no face "
                                   "found (its row says why).")
    p.add_argument("-m", "--model", required=True, help="trained classifier (.keras written by train)")
    p.add_argument("-i", "--input", required=True, nargs="+", metavar="PATH", help="images, folders, path lists")
    p.add_argument("--faces", choices=FACE_MODES, default="auto",
                   help="aligned: every file is a face crop like Adience's aligned faces, classified whole; "
                        "detect: every file is a photo, each face in it is found, aligned like Adience's and "
                        "classified; auto (default): files named landmark_aligned_face.* and square pictures "
                        "whose one face already sits where Adience's aligned faces have it are crops, the "
                        "rest photos")
    p.add_argument("--min-face", type=int, default=DEFAULT_MIN_FACE, metavar="PIXELS",
                   help=f"skip (and count) detected faces smaller than this on the shorter side of their box "
                        f"(default {DEFAULT_MIN_FACE})")
    p.add_argument("--min-confidence", type=_float_in(0.0, 1.0, high_open=False), default=DEFAULT_MIN_CONFIDENCE,
                   metavar="P", help=f"the detector's confidence (0..1) from which a candidate counts as a face "
                                     f"(default {DEFAULT_MIN_CONFIDENCE:g}: between the 0.98 or more of real faces "
                                     f"and the 0.82 at most of face-free photos, measured)")
    p.add_argument("--annotate", default=None, metavar="DIR",
                   help="also write each picture under DIR with its faces' boxes, landmarks, labels and scores "
                        "drawn on it (paths mirrored under DIR)")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                   help="output format (default: table; one image alone prints the original's line); every "
                        "format is written row by row as faces are scored (json: one array, jsonl: one object "
                        "per line)")
    p.add_argument("-o", "--output", default=None, help="write the rows to this file instead of stdout")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="faces per model call (default 64)")
    p.add_argument("--threshold", type=_float_in(0.0, 1.0, high_open=False), default=None, metavar="T",
                   help="male when score > T (default: the threshold `evaluate --store-threshold` stored in the "
                        "model, else 0.5)")
    _add_tta(p)
    p.set_defaults(func=cmd_classify)


def _familiar_form(rows: list) -> int | None:
    """The original's one-image form: its block for one face, one error line for a failed image;
    None for several faces (they get the table like any run)."""
    from model.inference.output import displayable, familiar_block

    if len(rows) != 1:
        return None
    if rows[0].error is not None:
        print(displayable(f"error: {rows[0].path}: {rows[0].error}"), file=sys.stderr)
        return 1
    print(familiar_block(rows[0]), end="")
    return 0


def cmd_classify(args) -> int:
    from model.inference.classify import ClassifyStream, resolve_threshold
    from model.inference.inputs import Inputs, named_paths
    from model.inference.output import RowWriter, summary_line
    from model.network.head import load_classifier

    outputs = [(args.output, "file", "-o")] if args.output else []
    if args.annotate:
        outputs.append((args.annotate, "dir", "--annotate"))
    if outputs:
        # The paths inside path lists too: -o or an annotated picture must not replace one of them.
        _check_outputs(outputs, [(args.model, "-m"), *named_paths(args.input)])
    model = load_classifier(args.model)
    threshold, source = resolve_threshold(args.model, args.threshold)
    if source != "default":
        print(f"deciding male when score > {threshold:.6g} ({'--threshold' if source == 'flag' else 'stored in the model'})",
              file=sys.stderr)
    inputs = Inputs(args.input)
    if args.annotate:
        try:
            os.makedirs(args.annotate, exist_ok=True)
        except OSError as err:
            return _fail(f"cannot create {args.annotate} ({err.strerror or err}); pass a writable --annotate folder")
    stream = ClassifyStream(model, inputs, faces=args.faces, min_face=args.min_face,
                            min_confidence=args.min_confidence, batch_size=args.batch_size,
                            progress=ScoringBars(), annotate_dir=args.annotate, total=inputs.count, threshold=threshold,
                            tta=args.tta)
    rows = iter(stream)
    if args.format is None and args.output is None and inputs.single_image:
        first = list(stream)          # one file: its faces
        status = _familiar_form(first)
        if status is not None:
            return status
        rows = iter(first)
    interrupted = False
    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if args.output:
            # Rows stream into a temporary file beside -o, renamed to -o at the end (also after
            # Ctrl-C: the rows written are complete); killed, the run leaves -o as it was.
            from pipeline.files import open_replacing
            try:
                out = stack.enter_context(open_replacing(args.output))
            except OSError as err:
                return _fail(f"cannot write {args.output} ({err.strerror or err}); pass a writable -o path")
        writer = RowWriter(out, args.format or "table")
        try:
            for row in rows:
                writer.write([row])
        except KeyboardInterrupt:
            interrupted = True
        finally:
            writer.close()      # a JSON array is closed even when the run stops early: rows written stay valid
    print(summary_line(stream.tally, inputs.skipped, args.min_face, args.output, tta=args.tta), file=sys.stderr)
    if interrupted:
        print("interrupted: the rows written are complete; rerun the command to classify the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if stream.tally.failed else 0


# ---------------------------------------------------------------- demo
DEMO_MARKER = ".gender-classifier-demo"


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the whole job end to end on generated synthetic data")
    p.add_argument("--work-dir", default="demo-work",
                   help="folder for the demo's synthetic inputs and outputs (emptied at each run)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    p.set_defaults(func=cmd_demo)


def _prepare_demo_dir(work_dir: str) -> None:
    """Empty the demo's own folder so a rerun reuses nothing stale; never touch a folder it did not make."""
    import shutil

    if os.path.isdir(work_dir) and os.listdir(work_dir):
        if not os.path.exists(os.path.join(work_dir, DEMO_MARKER)):
            from pipeline.errors import DataError
            raise DataError(f"{work_dir} exists and was not made by the demo; pass --work-dir with a new folder")
        shutil.rmtree(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    open(os.path.join(work_dir, DEMO_MARKER), "w").close()


def _run_step(title: str, argv: list[str], expected: tuple[int, ...] = (0,)) -> None:
    """Run one real command as a user would, showing it first so it can be copied."""
    import shlex
    import subprocess

    print(f"\n== {title}\n$ python cli.py {shlex.join(argv)}", flush=True)
    status = subprocess.call([sys.executable, os.path.abspath(__file__), *argv])
    if status not in expected:
        from pipeline.errors import DataError
        raise DataError(f"demo step '{title}' failed with exit status {status} (its message is above)")


def cmd_demo(args) -> int:
    import csv
    import json
    import time

    from model.network.t7_writer import write_vggface_t7
    from model.network.vggface import SLIM_WIDTHS
    from pipeline.synthetic.tree import make_adience_tree

    started = time.time()
    work = args.work_dir
    _prepare_demo_dir(work)
    data = os.path.join(work, "synthetic-adience")
    weights = os.path.join(work, "synthetic-slim-VGG_FACE.t7")
    records = os.path.join(work, "records")
    model_path = os.path.join(work, "gender_classifier.keras")
    report = os.path.join(work, "report")
    print("== generating SYNTHETIC inputs (not real faces, not the real VGG-Face weights)")
    summary = make_adience_tree(data, n_train=240, n_valid=80, seed=0, bad_files=True)
    counts = ", ".join(f"{split} {summary.count(split)}" for split in sorted(summary.by_label))
    print(f"   {data}: {summary.good} image files ({counts}) and {len(summary.rejects)} bad files to reject")
    write_vggface_t7(weights, SLIM_WIDTHS, seed=0)
    print(f"   {weights}: VGG_FACE.t7 structure (40 modules), slim widths, random weights")
    _run_step("preprocess: Beam job (DirectRunner) -> sharded TFRecords",
              ["preprocess", "-i", data, "-o", records])
    _run_step("train: frozen VGG-Face through relu4_2 + small head, with checkpoints",
              ["train", "-w", weights, "-i", records, "-o", model_path, "-e", str(args.epochs), "-m", "high"])
    _run_step("evaluate: report, per-age accuracy and plots",
              ["evaluate", "-m", model_path, "-i", records, "--report-dir", report])
    # The folder holds one of the generated bad files on purpose: classify lists it as an error
    # row, classifies the rest, and exits with status 1, as it does for any unreadable file.
    _run_step("classify: a folder of image files, batched (one bad file on purpose: exit status 1)",
              ["classify", "-m", model_path, "-i", os.path.join(data, "valid"), "--format", "csv",
               "-o", os.path.join(work, "classified.csv")], expected=(0, 1))
    with open(os.path.join(report, "report.json")) as f:
        valid = json.load(f)["valid"]
    print(f"\n== demo finished in {time.time() - started:.0f} s")
    print(f"   model:   {model_path}")
    print(f"   report:  {os.path.join(report, 'report.json')} (plots: {report}/*.png)")
    print(f"   validation accuracy on the synthetic split: {valid['accuracy']:.2%} (n={valid['n']})")
    with open(model_path[: -len(".keras")] + "_history.csv", newline="") as f:
        start = next(csv.DictReader(f))   # epoch 0: validation before the first step
    print(f"   before training, the linear start gave {float(start['val_accuracy']):.2%} on validation; "
          f"the start took {float(start['seconds']):.1f} s (feature statistics, fit and that validation)")
    return 0


# ---------------------------------------------------------------- entry
__version__ = "0.1.0"   # the one place: pyproject.toml reads it (dynamic version)
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


def _add_verbose(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show TensorFlow's and Beam's own log messages (TensorFlow's C++ start-up "
                             "messages, e.g. why no GPU was found, and Beam's worker logs)")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or program(),
        description="Adience gender classifier by transfer learning from VGG-Face.",
    )
    parser.add_argument("--version", action="version", version=f"gender-classifier {__version__}")
    _add_verbose(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_convert_parser, add_preprocess_parser, add_train_parser,
                add_evaluate_parser, add_classify_parser, add_demo_parser):
        add(sub)
    for command in sub.choices.values():
        # Also after the command (`train … -v`); SUPPRESS keeps a -v given before it.
        _add_verbose(command, default=argparse.SUPPRESS)
    return parser


# Whose log records -v shows; without it only their errors. Found by logger name, or by the source
# file for records a library sends to the root logger (Beam warns that way while it is imported).
_LIBRARIES = ("tensorflow", "keras", "absl", "apache_beam")


def _library_dirs() -> tuple[str, ...]:
    dirs = []
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name)   # locates the package without importing it
        if spec is not None:
            dirs += [os.path.join(d, "") for d in spec.submodule_search_locations or ()]
    return tuple(dirs)


def _from_library(record: logging.LogRecord, dirs: tuple[str, ...]) -> bool:
    return record.name.split(".")[0] in _LIBRARIES or record.pathname.startswith(dirs)


class _OnlyLibraryErrors(logging.Filter):
    """Without -v: TensorFlow's and Beam's own records below ERROR are not shown."""

    def __init__(self) -> None:
        super().__init__()
        self.dirs = _library_dirs()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not _from_library(record, self.dirs)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        # TensorFlow's C++ logs, from INFO up (device discovery, CUDA libraries not found, oneDNN).
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    # TensorFlow's C++ start-up chatter drowns the messages that matter; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet = _OnlyLibraryErrors()
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)


def _import_tensorflow_quietly(verbose: bool = False) -> None:
    """Import TensorFlow and discover its devices, with file descriptor 2 pointed at /dev/null
    unless verbose: its C++ start-up logs ("I0000 … oneDNN", "All log messages before
    absl::InitializeLog…", "failed call to cuInit") ignore every log-level variable, and a user's
    bad input must produce one line, not a screenful. With -v they are what the user asked for."""
    if "tensorflow" in sys.modules:
        return
    if verbose:
        import tensorflow
        tensorflow.config.list_physical_devices()
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow
            # Device discovery logs too (e.g. "failed call to cuInit" on a machine without a GPU).
            tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# What an interrupted command leaves behind, and what to do about it.
_INTERRUPTED = {
    "preprocess": "interrupted; the previous output in OUT (if any) is untouched; rerun the command to start over",
    "train": "interrupted; rerun the same command to resume from the last checkpoint",
    "evaluate": "interrupted; no report was written (an earlier report in its folder is untouched); rerun the command",
}


class _Interruption(logging.Filter):
    """Ctrl-C while a command runs: SIGINT raises KeyboardInterrupt as usual and is remembered, so
    that what it sets off in other threads is not reported as a second error — Beam's launcher
    threads that watch the worker processes, or read from them, fail or log errors when Ctrl-C
    stops those workers. Such a thread waits a moment for the main thread to see the signal."""

    GRACE_SECONDS = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()
        self.dirs = _library_dirs()

    def on_sigint(self, signum, frame) -> None:
        self.seen.set()
        raise KeyboardInterrupt

    def thread_failed(self, args) -> None:
        if not self.seen.wait(self.GRACE_SECONDS):
            threading.__excepthook__(args)

    def filter(self, record: logging.LogRecord) -> bool:
        """A library's record from a background thread: dropped when Ctrl-C explains it."""
        if threading.current_thread() is threading.main_thread() or not _from_library(record, self.dirs):
            return True
        return not self.seen.wait(self.GRACE_SECONDS if record.levelno >= logging.ERROR else 0)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield   # signal handlers can only be set from the main thread
            return
        saved = signal.signal(signal.SIGINT, self.on_sigint), threading.excepthook
        threading.excepthook = self.thread_failed
        handlers = logging.getLogger().handlers
        for handler in handlers:
            handler.addFilter(self)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, saved[0])
            if not self.seen.is_set():   # after Ctrl-C such threads may fail until the process exits
                threading.excepthook = saved[1]
                for handler in handlers:
                    handler.removeFilter(self)


def main(argv: list[str] | None = None) -> int:
    set_program(sys.argv[0])
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # --help and --version exit here, before anything heavy is imported. Only `preprocess`
    # accepts options it does not know: they go to Beam's PipelineOptions.
    args, extra = parser.parse_known_args(argv)
    _configure_logging(args.verbose)
    from pipeline.errors import InputError

    try:
        with _Interruption().watching():
            if args.command == "preprocess":
                # The Beam job never needs TensorFlow, and its launcher starts quickly without it.
                if args.verbose and not any(a.startswith("--default_sdk_harness_log_level") for a in extra):
                    extra.append("--default_sdk_harness_log_level=INFO")
                return args.func(args, extra)
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            _import_tensorflow_quietly(args.verbose)
            return args.func(args)
    except InputError as err:
        return _fail(in_flags(str(err), parser, args.command))
    except KeyboardInterrupt:
        print(f"{args.command}: {_INTERRUPTED.get(args.command, 'interrupted')}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
