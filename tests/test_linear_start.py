"""The linear start (issue #18): the standardized head starts as a logistic regression fitted on the
statistics images, so `train` begins where a linear probe ends.

The fit itself against scikit-learn at the same regularization; then through `train`: epoch 0
(validation before the first step) and the trained result against the linear-probe reference
(model/evaluation/linear_probe.py, fitted by the test on every training image), with a margin that
can fail; a resumed run does not refit; --head-init random keeps the random start.
"""
from __future__ import annotations

import numpy as np
import pytest

from model.evaluation.linear_probe import cut_model, linear_probe
from model.network.linear_start import fit_linear_start
from model.training import TrainConfig, train
from model.training import events

MARGIN = 0.05      # the start and the trained head must be within 5 points of the reference probe


def test_the_dual_fit_is_scikit_learn_s_logistic_regression():
    """n << d, as with real features: the dual fit equals the primal one at the chosen strength."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    n, d = 120, 3000
    x = (rng.normal(size=(n, d)) * 5 + 2).astype(np.float32)
    y = ((x - 2) @ rng.normal(size=d) / np.sqrt(d) + rng.normal(size=n) * 4 > 0).astype(np.float32)
    mean, variance = x.astype(np.float64).mean(0), x.astype(np.float64).var(0)
    start = fit_linear_start(x, y, mean, variance)
    standard = (x - mean) / np.sqrt(variance + 1e-12)
    lam = start.strength * float(np.mean(np.sum(standard ** 2, 1))) / n
    reference = LogisticRegression(C=1 / (lam * n), tol=1e-10, max_iter=10000).fit(standard, y)
    assert np.allclose(start.weights, reference.coef_[0], atol=1e-6 * np.abs(reference.coef_).max() + 1e-9)
    assert start.bias == pytest.approx(float(reference.intercept_[0]), abs=1e-5)
    assert 0.0 <= start.cv_accuracy <= 1.0 and start.images == n


def _train(records_dir, slim_t7, tmp_path, **options):
    seen = []
    result = train(TrainConfig(weights=slim_t7, records=records_dir, output=str(tmp_path / "m.keras"),
                               batch_size=16, strategy="default", precision="float32", **options),
                   progress=seen.append)
    return result, seen


def test_train_starts_at_the_probe_and_stays_there(records_dir, slim_t7, tmp_path):
    reference = linear_probe(cut_model(slim_t7), records_dir).accuracy
    result, seen = _train(records_dir, slim_t7, tmp_path, epochs=1)
    fitted = [e for e in seen if isinstance(e, events.LinearStartFitted)]
    started = [e for e in seen if isinstance(e, events.StartValidated)]
    assert len(fitted) == 1 and fitted[0].images == 120 and len(started) == 1 and started[0].start == "linear"
    epoch0 = result.history[0]
    assert epoch0["epoch"] == 0 and epoch0["val_accuracy"] == started[0].val_accuracy
    assert epoch0["val_accuracy"] >= reference - MARGIN, (epoch0, reference)
    assert result.final["val_accuracy"] >= reference - MARGIN, (result.history, reference)

    # Resumed (training longer): the start is in the checkpoint; nothing is refitted or revalidated.
    more, seen = _train(records_dir, slim_t7, tmp_path, epochs=2)
    assert more.resumed_from is not None
    assert not [e for e in seen if isinstance(e, (events.LinearStartFitted, events.StartValidated))]
    assert [row["epoch"] for row in more.history] == [0, 1, 2] and more.history[:2] == result.history[:2]


def test_random_start_is_still_reachable(records_dir, slim_t7, tmp_path):
    result, seen = _train(records_dir, slim_t7, tmp_path, epochs=1, head_init="random", augment=False)
    assert not [e for e in seen if isinstance(e, events.LinearStartFitted)]
    assert [e.start for e in seen if isinstance(e, events.StartValidated)] == ["random"]
    assert result.history[0]["epoch"] == 0


def test_same_seed_same_start(records_dir, slim_t7, tmp_path):
    """Deterministic: two fresh runs of the same settings end with identical weights."""
    digests = [_train(records_dir, slim_t7, tmp_path / str(k), epochs=1, augment=False)[0].weights_digest
               for k in range(2)]
    assert digests[0] == digests[1]


def test_the_kept_features_are_bounded():
    from model.network.feature_stats import FEATURE_MEMORY_BYTES, images_to_keep

    assert FEATURE_MEMORY_BYTES == 1 << 30
    assert images_to_keep(512, 28 * 28 * 512) == 512        # the default cut, full width: all 512 (0.8 GB)
    assert images_to_keep(512, 56 * 56 * 256) == 334        # relu3_3, full width: 1 GiB / 3.2 MB
    assert images_to_keep(512, 10 ** 12) == 1


def test_a_larger_cut_layer_fits_the_start_on_the_images_that_fit(records_dir, slim_t7, tmp_path, monkeypatch):
    """At a cut layer whose features would pass the memory bound, the start is fitted on the first
    images that fit (FEATURE_MEMORY_BYTES / 4 bytes / features), and training goes on from it."""
    from model.network import feature_stats

    per_image = {}
    real = feature_stats.images_to_keep

    def ten_images_fit(max_images, feature_count):
        per_image["features"] = feature_count
        monkeypatch.setattr(feature_stats, "FEATURE_MEMORY_BYTES", 10 * 4 * feature_count + 3)
        return real(max_images, feature_count)

    monkeypatch.setattr(feature_stats, "images_to_keep", ten_images_fit)
    result, seen = _train(records_dir, slim_t7, tmp_path, epochs=1, augment=False, cut_layer="relu3_3",
                          freeze_through="relu3_3")
    fitted = [e for e in seen if isinstance(e, events.LinearStartFitted)]
    assert len(fitted) == 1 and fitted[0].images == 10 and fitted[0].features == per_image["features"]
    assert [row["epoch"] for row in result.history] == [0, 1]


def _wide_head(features: int):
    import keras

    inputs = keras.Input((features,))
    hidden = keras.layers.Dropout(0.5, seed=0)(inputs)
    hidden = keras.layers.Dense(32, activation="relu", name="head_dense",
                                kernel_initializer=keras.initializers.GlorotUniform(seed=0))(hidden)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="male_prob")(hidden))


def test_the_start_survives_adam_on_a_wide_layer():
    """The probe's weights shrink with the feature count while Adam moves every weight by about the
    learning rate per step: written at their own scale, 150 steps at 1e-4 turn the start's direction
    (cosine 0.85 at 20,000 features, 0.69 at 50,000, 0.47 at full-width relu4_2). At the random
    kernel's scale the start is kept (0.99), and the head computes the same logit at step 0."""
    import keras
    import tensorflow as tf

    from model.network.linear_start import set_linear_start

    rng = np.random.default_rng(0)
    n, d = 1200, 20000
    latent = rng.normal(size=(n, 16))      # correlated features with a low-dimensional signal, as real ones
    x = (latent @ (rng.normal(size=(16, d)) * 0.3) + rng.normal(size=(n, d))).astype(np.float32)
    y = (latent[:, 0] + rng.normal(size=n) * 0.3 > 0).astype(np.float32)
    start = fit_linear_start(x[:256], y[:256], np.zeros(d), np.ones(d))
    model = _wide_head(d)
    initial_rms = float(np.sqrt(np.mean(np.square(model.get_layer("head_dense").kernel.numpy()))))
    alpha = set_linear_start(model, start, "head_dense", "male_prob")
    column = model.get_layer("head_dense").kernel.numpy()[:, 0]
    assert float(np.sqrt(np.mean(np.square(column)))) == pytest.approx(initial_rms, rel=1e-4) and alpha > 3
    logits = x[900:] @ start.weights + start.bias
    probs = model(x[900:]).numpy()[:, 0].astype(np.float64)
    assert np.allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-4)

    optimizer = keras.optimizers.Adam(1e-4)
    batches = iter(tf.data.Dataset.from_tensor_slices((x[:900], y[:900])).shuffle(900, seed=0).repeat().batch(32))

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(labels[:, None], model(images, training=True)))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    for _ in range(150):
        step(*next(batches))
    carried = model.get_layer("male_prob").kernel.numpy()[0, 0] * model.get_layer("head_dense").kernel.numpy()[:, 0]
    cosine = float(carried @ start.weights / (np.linalg.norm(carried) * np.linalg.norm(start.weights)))
    assert cosine > 0.95, cosine
