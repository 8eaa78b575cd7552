"""Session fixtures shared by the test files: generated inputs are made once per run.

Everything here is synthetic and small: a slim VGG_FACE-structured Torch7 file with random weights
and an Adience-shaped folder of real image files with a learnable difference between the classes.
"""
from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so MirroredStrategy runs with two replicas on a CPU-only machine.
# This must happen before TensorFlow initializes its devices, hence at conftest import.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

CLI = [sys.executable, os.path.join(ROOT, "cli.py")]
# The safety and guard tests' small inputs: records and models at the slim network's smallest input
# (fast everywhere; scores are beside the point there), preprocessed by Beam in this process.
SMALL_SIZE = 32
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="session")
def slim_t7(tmp_path_factory) -> str:
    """A slim VGG_FACE-structured t7 (same 40-module topology, narrow layers, random weights)."""
    from model.network.t7_writer import write_vggface_t7
    from model.network.vggface import SLIM_WIDTHS

    path = str(tmp_path_factory.mktemp("weights") / "slim_vggface.t7")
    write_vggface_t7(path, SLIM_WIDTHS, seed=0)
    return path


@pytest.fixture(scope="session")
def adience_root(tmp_path_factory) -> tuple[str, object]:
    """A generated Adience-shaped tree (good images and bad files) and its SyntheticSummary."""
    from pipeline.synthetic.tree import make_adience_tree

    root = str(tmp_path_factory.mktemp("adience"))
    summary = make_adience_tree(root, n_train=120, n_valid=40, seed=0, bad_files=True)
    return root, summary


@pytest.fixture(scope="session")
def records_dir(adience_root, tmp_path_factory) -> str:
    """The generated tree preprocessed by the Beam job (DirectRunner, one process: fastest for tests)."""
    from pipeline.preprocess.job import run_preprocess

    root, _ = adience_root
    out = str(tmp_path_factory.mktemp("records"))
    run_preprocess(root, out, image_size=224, train_shards=3, valid_shards=2,
                   beam_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    return out


@pytest.fixture(scope="session")
def trained_model(records_dir, slim_t7, tmp_path_factory) -> tuple[str, str]:
    """A slim classifier trained through model.training on `records_dir`: (model .keras path, records_dir).

    The slim backbone has random weights, so it is fine-tuned whole (freeze_through="none"): that
    learns the generated set to 100 % validation accuracy in 2 epochs, where the frozen random
    backbone hovers around 90-97 %.
    """
    from model.training import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "gender_classifier.keras"
    train(TrainConfig(weights=slim_t7, records=records_dir, output=str(out), epochs=2, batch_size=16,
                      augment=False, freeze_through="none", strategy="default", precision="float32"))
    return str(out), records_dir


@pytest.fixture(scope="session")
def classifier_path(trained_model) -> str:
    """The slim classifier trained on the generated records."""
    return trained_model[0]


@pytest.fixture(scope="session")
def model(classifier_path):
    """That classifier, loaded (safe mode, checked to be a classifier)."""
    from model.network.head import load_classifier

    return load_classifier(classifier_path)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    """A small Adience tree without bad files (12 training, 6 validation images)."""
    from pipeline.synthetic.tree import make_adience_tree

    root = str(tmp_path_factory.mktemp("tiny") / "adience")
    make_adience_tree(root, n_train=12, n_valid=6, image_size=48, seed=3, bad_files=False, variety=False)
    return root


@pytest.fixture(scope="session")
def tiny_records(tiny_root, tmp_path_factory) -> str:
    """tiny_root's records at SMALL_SIZE (read-only: damage a copy, the `records` fixture)."""
    from pipeline.preprocess.job import run_preprocess

    out = str(tmp_path_factory.mktemp("tiny_records") / "records")
    run_preprocess(tiny_root, out, image_size=SMALL_SIZE, train_shards=2, valid_shards=2, beam_args=IN_MEMORY)
    return out


@pytest.fixture
def records(tiny_records, tmp_path) -> str:
    """A private copy of tiny_records, free to damage."""
    import shutil

    copy = str(tmp_path / "records")
    shutil.copytree(tiny_records, copy)
    return copy


@pytest.fixture(scope="session")
def small_model(slim_t7, tmp_path_factory) -> str:
    """An untrained slim classifier at SMALL_SIZE (read-only: copy it to change it)."""
    from model.network.backbone import load_backbone
    from model.network.head import build_classifier

    path = str(tmp_path_factory.mktemp("small_model") / "small.keras")
    build_classifier(load_backbone(slim_t7, image_size=SMALL_SIZE), freeze_through="none").save(path)
    return path
