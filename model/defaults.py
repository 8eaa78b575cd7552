"""Training defaults and choices, in a module that imports nothing heavy: the CLI builds its
parsers from them without paying for a TensorFlow import (the Beam launcher never needs one)."""

# The original's cut: after relu4_2 (its "layer 30" counting padding and activation layers), frozen
# through it; its head was Dropout(0.5) -> Flatten -> Dense(32) (linear: Keras' default activation)
# -> Dense(1, sigmoid).
DEFAULT_CUT_LAYER = "relu4_2"
DEFAULT_FREEZE_THROUGH = "relu4_2"
DEFAULT_DENSE_UNITS = 32
DEFAULT_DROPOUT = 0.5

# The heads (--head). "standardized" (the default): the cut layer's features flattened and each
# value standardized with statistics of the training images, fixed at the start of training and
# saved in the model, then Dropout -> Dense(32, relu) -> Dense(1, sigmoid). "original": the seed's head
# as it was, on the raw features. Why the default is not the original: VGG-Face was trained on
# 0..255 pixels without batch normalization, so its relu4_2 features have an RMS of tens. Measured on
# full-width features of that scale (synthetic VGG-Face with realistic activations, 200/60 generated
# faces, Adam 1e-4, 3 epochs): a Dense(32, relu) head on the raw features died at once (epoch-1 loss
# 129-155, then every score equal: 50 %); the original linear head did not die but its losses ran
# into the hundreds (epoch-1 loss 287-427 at RMS 30, against 0.6-0.8 at RMS 0.1) and it learned
# unstably; the standardized head reached the logistic-regression reference (98-100 %) by epoch 1-2,
# with epoch-1 losses below 1. Standardizing also makes training independent of the feature scale.
HEAD_STANDARDIZED = "standardized"
HEAD_ORIGINAL = "original"
HEADS = (HEAD_STANDARDIZED, HEAD_ORIGINAL)
DEFAULT_HEAD = HEAD_STANDARDIZED
# How the standardized head starts (--head-init). "probe" (the default): at step 0 the head computes
# a logistic regression fitted on the statistics images' standardized features (model/network/
# linear_start.py), so training starts where a linear probe ends. "random": Glorot-random weights
# (the start before issue #18). --head original always starts random: it is the seed's head.
HEAD_INIT_PROBE = "probe"
HEAD_INIT_RANDOM = "random"
HEAD_INITS = (HEAD_INIT_PROBE, HEAD_INIT_RANDOM)
DEFAULT_HEAD_INIT = HEAD_INIT_PROBE
# Training images whose cut-layer features give the standardization statistics (per feature: each
# channel at each position gets its mean and variance over these images).
DEFAULT_STATS_IMAGES = 512

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# XLA for the training step (--jit) and where augmentation runs (--augment-on); "auto" decides by
# the machine (model/runtime.py: resolve_jit and resolve_augment_on say how, and why).
# Above this feature RMS the original head's first losses run into the tens and hundreds and its
# training turns unstable (measured: epoch-1 loss 0.6-2.2 at RMS 0.1-0.3, 7-14 at RMS 1, 30-430 at
# RMS 3-30); train's Setup event says so.
ORIGINAL_HEAD_RMS_LIMIT = 1.0
JIT_CHOICES = ("auto", "on", "off")
PLACEMENTS = ("auto", "host", "device")
# Automatic steps per training call (--steps-per-call auto): enough steps that a call lasts about
# this long, so the host's work per call (a sync, three summaries, an event) is well under 1 % of it.
AUTO_CALL_SECONDS = 0.5

# Adam's step size. The original used Keras' default Adam (1e-3). Adam moves every weight by about
# the learning rate per step, so a dense layer's output moves with its fan-in: 401,408 inputs for
# the flattened relu4_2 map of the real VGG-Face. Measured on full-width standardized features
# (200 generated faces, 5 epochs): epoch-1 loss 0.74 at 1e-4 against 1.68 at 3e-4, the same final
# accuracy. A slim test network (25,088 inputs) learns more slowly per step at 1e-4 — an effect of
# its 16x smaller fan-in, not a reason to change the default for the real one.
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_CHECKPOINT_EVERY = 100
