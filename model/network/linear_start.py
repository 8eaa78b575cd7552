"""The linear start (--head-init probe): the standardized head begins where a linear probe ends.

At the start of a fresh run the statistics pass (feature_stats.py) keeps the features and labels of
the first --stats-images training images. On those features, standardized exactly as the head's
`head_standardize` layer does, this fits an L2-regularized logistic regression and writes it into
the head so that at step 0 the head's output logit IS the regression's logit z = w.x + b:
`head_dense` unit 0 computes +alpha z and unit 1 computes -alpha z, and `male_prob` weighs them
+1/alpha and -1/alpha (ReLU(t) - ReLU(-t) = t; alpha puts the two columns at the scale of the
layer's random kernel: `set_linear_start` says why). The other hidden units keep their random
kernels with output weight 0, so they add nothing at step 0 and training can still put them to use.
This is "linear probing, then fine-tuning" (Kumar et al., ICLR 2022).

Why written here and not scikit-learn: the fit must run inside `train` on every worker of a
multi-worker run and give bit-identical weights there, with n (<= 512) images but d up to 400k
features. With n << d the regression is solved in the dual: by the representer theorem w = X'beta,
so only the n x n Gram matrix K = X X' is needed. K = U S U' gives an n-dimensional embedding
Z = U S^(1/2) with Z Z' = K, on which an ordinary Newton method (unpenalized bias, damped steps)
solves the same problem exactly; then beta = U S^(-1/2) v. numpy, float64, deterministic.

How the regularization is chosen (and only on training images, never the validation split): the
mean log-loss plus (lam/2)|w|^2, lam = c * mean(diag K) / n (which makes c independent of the
feature count and scale), c on the grid LAMBDA_GRID; 5-fold cross-validation over the n images
(folds by a fixed permutation), choosing the c with the lowest held-out log-loss (log-loss rather
than accuracy: the start's logits are the head's starting confidence, and must be calibrated).
The standardization statistics come from all n images, held-out folds included (a small optimism,
inside the training images only). Measured (bench/linear_start_vs_probe.py: six generated sets, 200
training / 300 validation faces, slim, 1x): the start's validation accuracy is flat for c from 1e-7
to 1e-2 and falls beyond; the CV choice lands in that plateau, and the start is 1.2 points over
scikit-learn's probe (C=1 on StandardScaler features) on average, never under. The one difference
from that probe is the head's variance floor (head.py), which the fit inherits: without it the start
matches the probe (-0.1 points on average).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import numpy as np

# Dimensionless regularization strengths c (lam = c * mean(diag K) / n), weak to strong.
LAMBDA_GRID = tuple(10.0 ** k for k in range(-6, 2))
CV_FOLDS = 5
CV_SEED = 0                   # the fold assignment: fixed, so every worker and every rerun agree
NEWTON_ITERATIONS = 50
NEWTON_TOLERANCE = 1e-10
# Eigenvalues of K below this fraction of the largest are dropped (null directions of the data).
EIGEN_FLOOR = 1e-10
GRAM_CHUNK = 8192             # features standardized (in float64) at a time when forming K and w
LOGIT_UNITS = 2               # head_dense units that carry +z and -z


@dataclass(frozen=True)
class LinearStart:
    """The fitted probe, in the head's standardized feature space."""

    weights: np.ndarray       # float64 [features]
    bias: float
    strength: float           # the chosen c (lam = c * mean(diag K) / n)
    cv_log_loss: float        # held-out mean log-loss at that c
    cv_accuracy: float        # held-out accuracy at that c
    train_accuracy: float     # the final fit's accuracy on the n images
    images: int
    seconds: float            # the fit, Gram matrix included


def _sigmoid(f: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * f))      # overflow-free


def _log_loss(f: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, f) - y * f))


def _embed(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, s) of the eigenvalues of K kept (above EIGEN_FLOOR x the largest)."""
    s, u = np.linalg.eigh(gram)
    keep = s > EIGEN_FLOOR * max(float(s[-1]), 1e-300)
    return u[:, keep], s[keep]


def _newton(z: np.ndarray, y: np.ndarray, lam: float, start: np.ndarray | None = None) -> np.ndarray:
    """Minimize mean log-loss(z v + b) + lam/2 |v|^2 (b unpenalized): damped Newton from `start`
    (a neighbouring strength's answer: far fewer steps than from 0 when lam is small); [v, b]."""
    n, r = z.shape
    a = np.hstack([z, np.ones((n, 1))])
    penalty = np.full(r + 1, lam)
    penalty[-1] = 0.0
    theta = np.zeros(r + 1) if start is None else start.copy()

    def objective(t):
        return _log_loss(a @ t, y) + 0.5 * lam * float(t[:-1] @ t[:-1])

    current = objective(theta)
    for _ in range(NEWTON_ITERATIONS):
        p = _sigmoid(a @ theta)
        grad = a.T @ (p - y) / n + penalty * theta
        hessian = (a * (p * (1 - p))[:, None]).T @ a / n + np.diag(penalty) + 1e-12 * np.eye(r + 1)
        step = np.linalg.solve(hessian, grad)
        decrement = float(grad @ step)
        if decrement < NEWTON_TOLERANCE:
            break
        size = 1.0
        while size > 1e-8:                  # backtracking: the full step can overshoot when lam is small
            trial = objective(theta - size * step)
            if trial <= current - 0.25 * size * decrement:
                break
            size *= 0.5
        theta, current = theta - size * step, trial
    return theta


def _fit_dual(gram: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """(beta, b) with w = X' beta: the regression on the images whose Gram matrix is `gram`."""
    u, s = _embed(gram)
    theta = _newton(u * np.sqrt(s), y, lam)
    return u @ (theta[:-1] / np.sqrt(s)), float(theta[-1])


def choose_strength(gram: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(c, held-out log-loss, held-out accuracy): CV_FOLDS-fold cross-validation over LAMBDA_GRID."""
    n = len(y)
    scale = float(np.mean(np.diag(gram))) / n
    folds = np.random.default_rng(CV_SEED).permutation(n) % min(CV_FOLDS, n)
    held_logits = {c: np.zeros(n) for c in LAMBDA_GRID}
    for k in range(int(folds.max()) + 1):
        train, held = folds != k, folds == k
        if len(np.unique(y[train])) < 2:      # a fold with one class cannot be fitted: score it as chance
            continue
        sub = gram[np.ix_(train, train)]
        u, s = _embed(sub)
        theta = None
        for c in sorted(LAMBDA_GRID, reverse=True):     # strong to weak, each from the last: warm starts
            theta = _newton(u * np.sqrt(s), y[train], c * scale, theta)
            held_logits[c][held] = gram[np.ix_(held, train)] @ (u @ (theta[:-1] / np.sqrt(s))) + theta[-1]
    scores = {c: (_log_loss(f, y), float(np.mean((f > 0) == (y > 0.5)))) for c, f in held_logits.items()}
    best = min(LAMBDA_GRID, key=lambda c: (scores[c][0], c))
    return best, *scores[best]


def _standardized_chunks(features: np.ndarray, mean: np.ndarray, scale: np.ndarray):
    for start in range(0, features.shape[1], GRAM_CHUNK):
        stop = start + GRAM_CHUNK
        yield slice(start, stop), (features[:, start:stop].astype(np.float64) - mean[start:stop]) / scale[start:stop]


def fit_linear_start(features: np.ndarray, labels: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> LinearStart:
    """The probe on `features` (float32 [n, d], the cut layer's flattened outputs) standardized with
    `mean` and `variance` (the head's, floor applied), and 0/1 `labels`."""
    started = time.perf_counter()
    y = np.asarray(labels, np.float64)
    scale = np.sqrt(np.asarray(variance, np.float64) + 1e-12)   # head_standardize's epsilon
    mean = np.asarray(mean, np.float64)
    n = len(y)
    gram = np.zeros((n, n))
    for _, x in _standardized_chunks(features, mean, scale):
        gram += x @ x.T
    if len(np.unique(y)) < 2:         # one class only: the best linear start is the constant logit
        weights, bias = np.zeros(features.shape[1]), float(np.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3)))
        return LinearStart(weights, bias, float("nan"), float("nan"), float("nan"), float(y.mean() >= 0.5), n,
                           time.perf_counter() - started)
    strength, cv_loss, cv_accuracy = choose_strength(gram, y)
    beta, bias = _fit_dual(gram, y, strength * float(np.mean(np.diag(gram))) / n)
    weights = np.zeros(features.shape[1])
    for columns, x in _standardized_chunks(features, mean, scale):
        weights[columns] = x.T @ beta
    train_accuracy = float(np.mean(((gram @ beta + bias) > 0) == (y > 0.5)))
    return LinearStart(weights, float(bias), strength, cv_loss, cv_accuracy, train_accuracy, n,
                       time.perf_counter() - started)


def start_scale(weights: np.ndarray, initial_kernel: np.ndarray) -> float:
    """alpha: the factor that gives the start's columns the RMS of the layer's own random kernel
    (1 when the probe's weights are all zero: one class)."""
    rms = float(np.sqrt(np.mean(np.square(weights))))
    target = float(np.sqrt(np.mean(np.square(initial_kernel))))
    return target / rms if rms > 0 and target > 0 else 1.0


def set_linear_start(model: keras.Model, start: LinearStart, dense: str, output: str) -> float:
    """Write the probe into the head: `dense` units 0 and 1 compute ReLU(+alpha z) and ReLU(-alpha z),
    `output` weighs them +1/alpha and -1/alpha and every other unit 0, its bias 0: the output logit
    is z. The other units' kernels and biases stay as initialized. Returns alpha (start_scale).

    Why alpha: the split of z between the two layers is free, and Adam moves every weight by about
    the learning rate per step whatever its size. The probe's weights shrink with the feature count
    (median 1.25e-4 at full-width relu4_2 against 3.2e-3 slim), so written as they are, a few hundred
    steps at 1e-4 replaced half of the start at full width (bench/linear_start_drift.py: cosine 0.48,
    2 of 60 validation faces lost). At the scale of the layer's random kernel, which the random start
    trains from without harm, a step changes the start as little as it changes a random column
    (measured on the same run: alpha 8.1, cosine 0.89, 100 % kept; slim alpha 1.3, unchanged).
    Assigned outside any replica context: under a tf.distribute strategy every replica's copy gets
    the same values."""
    hidden, out = model.get_layer(dense), model.get_layer(output)
    kernel, bias = (np.asarray(v.numpy(), np.float64) for v in (hidden.kernel, hidden.bias))
    alpha = start_scale(start.weights, kernel)
    kernel[:, 0], kernel[:, 1] = alpha * start.weights, -alpha * start.weights
    bias[0], bias[1] = alpha * start.bias, -alpha * start.bias
    out_kernel = np.zeros(tuple(out.kernel.shape))
    out_kernel[0, 0], out_kernel[1, 0] = 1.0 / alpha, -1.0 / alpha
    hidden.kernel.assign(kernel.astype(np.float32))
    hidden.bias.assign(bias.astype(np.float32))
    out.kernel.assign(out_kernel.astype(np.float32))
    out.bias.assign(np.zeros(tuple(out.bias.shape), np.float32))
    return alpha
