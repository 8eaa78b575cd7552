"""How far training moves the linear start (issue #18): a trained model against the start it began from.

A run with --head-init probe begins with head_dense unit 0 = +alpha w and unit 1 = -alpha w, weighed
+1/alpha and -1/alpha by male_prob (w: the regression's weights over the standardized features;
model/network/linear_start.py). This refits that start the way `train` does (the first
--stats-images training images of the records, the same statistics, the same deterministic fit) and
compares it with what the trained model's units 0 and 1 carry (the column times its output weight):
the median |weight| of the start, the median change, the norm ratio and the cosine. A cosine near 1 means
training refined the start; far below 1 means Adam's steps (about the learning rate per weight per
step, whatever the gradient's size) have replaced it.

    .venv/bin/python bench/linear_start_drift.py MODEL.keras RECORDS [--stats-images 512]

Not part of `make bench`: it needs a trained model (about 3 minutes at full width for the refit).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("records")
    parser.add_argument("--stats-images", type=int, default=None)
    args = parser.parse_args()

    import keras

    from model.defaults import DEFAULT_STATS_IMAGES
    from model.network.feature_stats import cut_feature_statistics
    from model.network.head import DENSE_LAYER, FLATTEN_LAYER, OUTPUT_LAYER, STANDARDIZE_LAYER
    from model.network.linear_start import start_scale
    from model.training.start import fit_start

    model = keras.models.load_model(args.model, compile=False)
    # The cut layer: the one before the head's Flatten (the classifier is one chain of layers).
    names = [layer.name for layer in model.layers]
    cut = names[names.index(FLATTEN_LAYER) - 1]
    stats = cut_feature_statistics(model, cut, args.records, ["train"], args.stats_images or DEFAULT_STATS_IMAGES,
                                   keep_features=True)
    saved = model.get_layer(STANDARDIZE_LAYER)
    if not np.allclose(saved.moving_mean.numpy(), stats.mean, rtol=1e-4, atol=1e-4 * float(np.abs(stats.mean).max())):
        sys.exit("these records' statistics are not the model's: pass the records and --stats-images it was trained with")
    start = fit_start(stats)     # as train fits it
    kernel = model.get_layer(DENSE_LAYER).kernel.numpy().astype(np.float64)
    output = model.get_layer(OUTPUT_LAYER).kernel.numpy().ravel()
    w = start.weights
    print(f"{args.model}: cut {cut}, {len(w):,} features, start fitted on {start.images} images "
          f"(strength c = {start.strength:g})")
    print("| unit | median abs(start) | median abs(trained - start) | norm trained / start | cosine |")
    print("|---|---|---|---|---|")
    for unit, carries in ((0, "+z"), (1, "-z")):
        trained = output[unit] * kernel[:, unit]     # the linear function the unit carries: +w for both
        cosine = float(trained @ w / (np.linalg.norm(trained) * np.linalg.norm(w)))
        print(f"| {unit} ({carries}) | {np.median(np.abs(w)):.2e} | "
              f"{np.median(np.abs(trained - w)):.2e} | {np.linalg.norm(trained) / np.linalg.norm(w):.2f} | {cosine:.3f} |")
    alpha = start_scale(w, kernel[:, 2:])
    print(f"output weights of units 0, 1: {output[0]:+.4f}, {output[1]:+.4f} (start: about {1 / alpha:+.4f}, "
          f"{-1 / alpha:+.4f}); largest of the others: {np.abs(output[2:]).max():.4f} (start: 0)")


if __name__ == "__main__":
    main()
