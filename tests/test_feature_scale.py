"""Training learns on features of any realistic scale: VGG-Face's real relu4_2 features have an RMS of
tens (NOTES.md §6), a hundred times what the project's first stand-in gave, and the default head
must reach the accuracy of a linear probe on the same frozen features whatever that scale.

Each case trains through the real `train` code with the default head and compares the validation
accuracy with scikit-learn's logistic regression on the standardized frozen features (the reference
the test computes itself), on two generated sets: classes told apart by colour, and by shape only.
"""
from __future__ import annotations

import numpy as np
import pytest

from model.evaluation.linear_probe import cut_model, frozen_features, linear_probe
from model.network.t7_writer import REALISTIC_RELU4_2_RMS, write_vggface_t7
from model.network.vggface import SLIM_WIDTHS

SIZE = 112            # records side: small for speed; the features stay realistic (tested below)
# 400 training faces: with 200 the trainer generalizes on the shape set about as well as the probe
# minus the tolerance (93 % against 98 %, measured), too close to call; the real set has 29,437.
N_TRAIN, N_VALID = 400, 60
TOLERANCE = 0.05      # the trainer must be within 5 points of the reference
FLOOR = 0.90


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, str]:
    """Records of the two generated sets, by cue."""
    from pipeline.preprocess.job import run_preprocess
    from pipeline.synthetic.tree import make_adience_tree

    out = {}
    for cue in ("colour", "shape"):
        work = tmp_path_factory.mktemp(f"scale_{cue}")
        make_adience_tree(str(work / "root"), n_train=N_TRAIN, n_valid=N_VALID, seed=1, bad_files=False,
                          variety=False, cue=cue)
        run_preprocess(str(work / "root"), str(work / "records"), image_size=SIZE, train_shards=2, valid_shards=1,
                       beam_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"])
        out[cue] = str(work / "records")
    return out


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[float, str]:
    """One seed's slim VGG_FACE.t7 at 0.01x, 1x (realistic) and 10x the realistic feature scale."""
    work = tmp_path_factory.mktemp("scaled_weights")
    paths = {}
    for scale in (0.01, 1.0, 10.0):
        paths[scale] = str(work / f"vggface_x{scale:g}.t7")
        write_vggface_t7(paths[scale], SLIM_WIDTHS, seed=0, scale=scale)
    return paths


def test_generated_weights_have_the_real_network_s_feature_scale(backbones, records):
    """The stand-in's relu4_2 RMS is the real network's order (between 10 and 100) on generated
    faces of both sets, and `scale` multiplies it exactly."""
    low, high = REALISTIC_RELU4_2_RMS
    rms = {}
    for scale, weights in backbones.items():
        features, _ = frozen_features(cut_model(weights, SIZE), records["shape"], "valid")
        rms[scale] = float(np.sqrt(np.mean(features ** 2)))
    colour, _ = frozen_features(cut_model(backbones[1.0], SIZE), records["colour"], "valid")
    assert low <= rms[1.0] <= high and low <= float(np.sqrt(np.mean(colour ** 2))) <= high, rms
    assert rms[0.01] == pytest.approx(rms[1.0] * 0.01, rel=1e-3)
    assert rms[10.0] == pytest.approx(rms[1.0] * 10, rel=1e-3)


@pytest.mark.parametrize("cue, scale", [("colour", 1.0), ("shape", 1.0), ("shape", 0.01), ("shape", 10.0)])
def test_default_head_reaches_the_linear_probe_at_any_feature_scale(cue, scale, backbones, records, tmp_path):
    from model.training import TrainConfig, train

    weights, records_dir = backbones[scale], records[cue]
    reference = linear_probe(cut_model(weights, SIZE), records_dir).accuracy
    result = train(TrainConfig(weights=weights, records=records_dir, output=str(tmp_path / "m.keras"), epochs=6,
                               batch_size=16, augment=False, strategy="default", precision="float32"))
    accuracy = result.final["val_accuracy"]
    assert reference >= FLOOR, f"the generated {cue} set is not linearly separable enough: {reference}"
    assert accuracy >= FLOOR and accuracy >= reference - TOLERANCE, (cue, scale, accuracy, reference,
                                                                     result.history)


def test_large_references_run_in_float32_with_the_same_answer(backbones, records, monkeypatch):
    """Above FLOAT64_LIMIT bytes of training features the reference keeps them in float32 (2,000
    full-width images would be 6.4 GB in float64); the probe's accuracy and the RMS do not change."""
    from model.evaluation import linear_probe as module

    cut = cut_model(backbones[1.0], SIZE)
    seen = []
    real = module.frozen_features
    monkeypatch.setattr(module, "frozen_features", lambda *a: seen.append(a[-1]) or real(*a))
    exact = linear_probe(cut, records["shape"])
    monkeypatch.setattr(module, "FLOAT64_LIMIT", 0)
    small = linear_probe(cut, records["shape"])
    assert seen == [np.float64, np.float64, np.float32, np.float32]
    assert small.accuracy == exact.accuracy
    assert small.train_feature_rms == pytest.approx(exact.train_feature_rms, rel=1e-5)
