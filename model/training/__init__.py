"""Training the classifier: `train(TrainConfig(...))`. See loop.py for how the pieces fit."""
from model.training.config import TrainConfig, fingerprint, machine_of, output_paths
from model.training.datasets import training_splits
from model.training.exports import HISTORY_FIELDS, weights_digest
from model.training.loop import TrainResult, collapse_reason, train
from model.training.state import checkpoint_state, fingerprint_changes

__all__ = ["TrainConfig", "TrainResult", "train", "output_paths", "fingerprint", "machine_of", "training_splits",
           "checkpoint_state", "fingerprint_changes", "weights_digest", "collapse_reason", "HISTORY_FIELDS"]
