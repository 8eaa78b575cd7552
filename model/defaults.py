"""Training defaults and choices, in a module that imports nothing heavy: the CLI builds its
parsers from them without paying for a TensorFlow import (the Beam launcher never needs one)."""

# The original's head: cut after relu4_2 (its "layer 30" counting padding and activation layers),
# frozen through it, then Dropout(0.5) -> Flatten -> Dense(32) -> Dense(1, sigmoid).
DEFAULT_CUT_LAYER = "relu4_2"
DEFAULT_FREEZE_THROUGH = "relu4_2"
DEFAULT_DENSE_UNITS = 32
DEFAULT_DROPOUT = 0.5

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")

# Adam's step size. The original used Keras' default Adam (1e-3). The head is a dense layer on the
# flattened relu4_2 map (401,408 inputs for the real VGG-Face), fed unnormalized ReLU activations
# (mean-subtracted 0..255 pixels through nine convolutions), so its pre-activations are large and
# 1e-3 overshoots in the first steps: on an earlier version of the generated set, epoch-1 training
# loss was 1.88 at 1e-3 against 0.53 at 1e-4, and validation loss stayed higher at 1e-3 over
# 5 epochs. On the current generated set both reach 100 % validation accuracy by epoch 2.
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_CHECKPOINT_EVERY = 100
