"""gender-classifier: the one command-line entry. Parses arguments and calls `pipeline` and `model`.

Every command maps bad input (a DataError or ModelError raised below it) to one line on stderr
and exit status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

# TensorFlow's C++ start-up chatter drowns the messages that matter; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_BAD_INPUT = 2


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


# ---------------------------------------------------------------- convert (issue: foundation)
def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert VGG_FACE.t7 to a Keras .keras model")
    p.add_argument("-w", "--weights", required=True, help="path to VGG_FACE.t7")
    p.add_argument("-o", "--output", required=True, help="output .keras file")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    raise NotImplementedError("convert")


# ---------------------------------------------------------------- preprocess
def add_preprocess_parser(sub) -> None:
    p = sub.add_parser("preprocess", help="Beam job: Adience folders -> sharded TFRecords")
    p.set_defaults(func=cmd_preprocess)


def cmd_preprocess(args, beam_args: list[str]) -> int:
    raise NotImplementedError("preprocess")


# ---------------------------------------------------------------- train
def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train the gender classifier on preprocessed records")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    raise NotImplementedError("train")


# ---------------------------------------------------------------- evaluate
def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="batch evaluation report with per-age accuracy and plots")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    raise NotImplementedError("evaluate")


# ---------------------------------------------------------------- classify
def add_classify_parser(sub) -> None:
    p = sub.add_parser("classify", help="classify image files, folders or lists of paths")
    p.set_defaults(func=cmd_classify)


def cmd_classify(args) -> int:
    raise NotImplementedError("classify")


# ---------------------------------------------------------------- demo
def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the whole job end to end on generated synthetic data")
    p.add_argument("--work-dir", default="demo-work")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    raise NotImplementedError("demo")


# ---------------------------------------------------------------- entry
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gender-classifier",
        description="Adience gender classifier by transfer learning from VGG-Face.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_convert_parser, add_preprocess_parser, add_train_parser,
                add_evaluate_parser, add_classify_parser, add_demo_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from model.errors import ModelError
    from pipeline.errors import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Only `preprocess` accepts options it does not know: they go to Beam's PipelineOptions.
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "preprocess":
            return args.func(args, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except (DataError, ModelError) as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        return _fail("interrupted; work already written is kept (rerun the same command to resume)")


if __name__ == "__main__":
    sys.exit(main())
