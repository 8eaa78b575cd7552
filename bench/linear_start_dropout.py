"""What dropout on the standardized features does to the linear start (issue #18): the start's
accuracy and log-loss on its own training images with the head in training mode (dropout on, as in
every training step) against inference mode (dropout off: what validation and epoch 0 see).

    .venv/bin/python bench/linear_start_dropout.py WEIGHTS RECORDS [--dropout 0.5] [--draws 20]
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("records")
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.5])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()

    import keras
    import numpy as np

    from model.defaults import DEFAULT_CUT_LAYER
    from model.network.backbone import load_backbone
    from model.network.feature_stats import cut_feature_statistics
    from model.network.head import (DENSE_LAYER, DROPOUT_LAYER, OUTPUT_LAYER, STANDARDIZE_LAYER, build_classifier,
                                    set_feature_statistics)
    from model.training.start import apply_linear_start
    from pipeline.manifest import load_manifest

    size = load_manifest(args.records).image_size
    print("| dropout | start accuracy, dropout off | with dropout (mean of draws) | log-loss off | log-loss on "
          "| median abs logit | logit std under dropout (median) |")
    print("|---|---|---|---|---|---|---|")
    for rate in args.dropout:
        model = build_classifier(load_backbone(args.weights, image_size=size), dropout=rate)
        stats = cut_feature_statistics(model, DEFAULT_CUT_LAYER, args.records, ["train"], args.images,
                                       image_size=size, keep_features=True)
        set_feature_statistics(model, stats.mean, stats.variance)
        apply_linear_start(model, stats)
        # The head alone, on the kept features (the backbone is frozen: its output is these).
        head_in = keras.Input(stats.features.shape[1:])
        x = head_in
        for name in (STANDARDIZE_LAYER, DROPOUT_LAYER, DENSE_LAYER):
            x = model.get_layer(name)(x)
        hidden = x
        head = keras.Model(head_in, model.get_layer(OUTPUT_LAYER)(x))
        # The start's logit: units 0 and 1 carry ReLU(+alpha z) and ReLU(-alpha z), weighed +-1/alpha.
        out_weights = model.get_layer(OUTPUT_LAYER).kernel.numpy()[:2, 0]
        logit_of = keras.Model(head_in, hidden[:, 0] * out_weights[0] + hidden[:, 1] * out_weights[1])
        y = stats.labels

        def scores(training):
            p = np.clip(head(stats.features, training=training).numpy()[:, 0], 1e-7, 1 - 1e-7)
            return float(np.mean((p >= 0.5) == (y > 0.5))), float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))

        off = scores(False)
        on = np.mean([scores(True) for _ in range(args.draws)], axis=0)
        z = logit_of(stats.features, training=False).numpy()
        noisy = np.stack([logit_of(stats.features, training=True).numpy() for _ in range(args.draws)])
        print(f"| {rate:g} | {off[0]:.1%} | {on[0]:.1%} | {off[1]:.3f} | {on[1]:.3f} | {np.median(np.abs(z)):.3g} "
              f"| {np.median(noisy.std(0)):.3g} |", flush=True)


if __name__ == "__main__":
    main()
