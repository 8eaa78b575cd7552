"""Strategies and precision: MirroredStrategy over the two logical CPUs (conftest), bf16 on CPU, and
a real two-process MultiWorkerMirroredStrategy run on 127.0.0.1 through the command."""
from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess

import keras
import pytest
import tensorflow as tf

from model.runtime import (cluster_from_env, cluster_task_count, precision_for_capabilities, select_precision,
                              select_strategy, task_info)
from model.errors import ModelError
from model.training import TrainConfig, train, weights_digest
from model.training.events import Setup, StepsDone
from tests.conftest import CLI, ROOT


@pytest.mark.parametrize("capabilities, policy", [
    ([], "float32"),
    ([(8, 0)], "mixed_bfloat16"),
    ([(9, 0), (8, 6)], "mixed_bfloat16"),
    ([(7, 5)], "mixed_float16"),
    ([(8, 0), (7, 0)], "mixed_float16"),     # the weakest GPU decides
    ([(6, 1)], "float32"),
    ([None], "float32"),
])
def test_precision_follows_the_gpus(capabilities, policy):
    assert precision_for_capabilities(capabilities) == policy


def test_precision_and_strategy_choices():
    assert select_precision("auto") == "float32"          # this machine has no GPU
    for name in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert select_precision(name) == name
    with pytest.raises(ModelError, match="unknown `precision` 'fp8'"):
        select_precision("fp8")
    with pytest.raises(ModelError, match="unknown strategy 'tpu'"):
        select_strategy("tpu")
    default = select_strategy("auto")
    assert default.num_replicas_in_sync == 1 and task_info(default).is_chief
    mirrored = select_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy) and mirrored.num_replicas_in_sync == 2


def test_tf_config_parsing(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_from_env() == {}
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert cluster_task_count(cluster_from_env()) == 3
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ModelError, match="TF_CONFIG is not valid"):
        select_strategy("auto")


def _fresh_digest(slim_t7: str, **head) -> str:
    """Digest of the untrained classifier (same seed): what training must move away from."""
    from model.network.backbone import load_backbone
    from model.network.head import build_classifier

    return weights_digest(build_classifier(load_backbone(slim_t7), **head))


def test_mirrored_strategy_on_two_logical_cpus(records_dir, slim_t7, tmp_path):
    events = []
    result = train(TrainConfig(weights=slim_t7, records=records_dir, output=str(tmp_path / "m.keras"), epochs=1,
                               batch_size=8, augment=False, strategy="mirrored", precision="float32",
                               steps_per_call=1), progress=events.append)
    setup = next(e for e in events if isinstance(e, Setup))
    steps = [e for e in events if isinstance(e, StepsDone)]
    assert result.strategy == "MirroredStrategy" and result.replicas == 2
    assert result.global_batch_size == 16 and setup.global_batch == 16
    # 120 examples = 15 full batches of 8 per replica: 8 steps, the last one on one replica only.
    assert len(steps) == setup.steps_per_epoch == 8
    assert [e.examples for e in steps] == [16] * 7 + [8]
    assert result.final["train_examples"] == 120 and result.final["val_count"] == 40
    assert len(result.replica_digests) == 2 and result.replica_digests[0] == result.replica_digests[1]
    assert result.weights_digest != _fresh_digest(slim_t7)


def test_mixed_bfloat16_on_cpu(records_dir, slim_t7, tmp_path):
    events = []
    result = train(TrainConfig(weights=slim_t7, records=records_dir, output=str(tmp_path / "m.keras"), epochs=1,
                               batch_size=32, augment=False, strategy="default", precision="mixed_bfloat16",
                               steps_per_call=1), progress=events.append)
    setup = next(e for e in events if isinstance(e, Setup))
    assert result.precision == "mixed_bfloat16" and not setup.loss_scaling
    assert setup.compute_dtype == "bfloat16" and setup.output_dtype == "float32"
    losses = [e.loss for e in events if isinstance(e, StepsDone)]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(result.final["val_loss"])
    # The policy is restored after training, and the saved model is float32 throughout.
    assert keras.mixed_precision.global_policy().name == "float32"
    from model.network.head import load_classifier
    saved = load_classifier(result.output)
    assert {layer.compute_dtype for layer in saved.layers if layer.name != "image"} == {"float32"}


def test_mixed_float16_trains_with_loss_scaling(records_dir, slim_t7, tmp_path):
    events = []
    result = train(TrainConfig(weights=slim_t7, records=records_dir, output=str(tmp_path / "m.keras"), epochs=1,
                               batch_size=40, augment=False, strategy="default", precision="mixed_float16",
                               steps_per_call=1), progress=events.append)
    setup = next(e for e in events if isinstance(e, Setup))
    assert setup.loss_scaling and setup.compute_dtype == "float16" and setup.output_dtype == "float32"
    losses = [e.loss for e in events if isinstance(e, StepsDone)]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(result.final["val_loss"]) and result.weights_digest != _fresh_digest(slim_t7)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes_train(command: list[str], envs: list[dict]) -> list[str]:
    """Run one training process per environment at once; their stdout, each having exited 0."""
    processes = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for env in envs]
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=400)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return outputs


def _equal_digests_on_two_workers(outputs: list[str]) -> None:
    digests = [re.search(r"^final weights digest: ([0-9a-f]{64})$", out, re.M).group(1) for out in outputs]
    assert digests[0] == digests[1]
    for index, out in enumerate(outputs):
        assert "MultiWorkerMirroredStrategy, 2 replica(s) on 2 worker(s)" in out
        assert f"this is worker {index}" in out
    assert "(chief)" in outputs[0] and "the chief writes the outputs" in outputs[1]


def test_two_worker_processes_end_with_identical_weights(records_dir, slim_t7, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    output = tmp_path / "mw" / "m.keras"
    command = [*CLI, "train", "-w", slim_t7, "-i", records_dir, "-o", str(output), "-e", "1", "-b1", "8",
               "--no-augment", "--checkpoint-every", "4"]
    outputs = _two_processes_train(command, [
        dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        for index in range(2)])
    _equal_digests_on_two_workers(outputs)
    assert all("validation (40 images)" in out for out in outputs)
    # Only the chief wrote outputs and kept checkpoints; the other worker's temporary dir is gone.
    assert output.exists() and (tmp_path / "mw" / "m_savedmodel").is_dir()
    assert tf.train.latest_checkpoint(str(tmp_path / "mw" / "m.ckpt"))
    assert not (tmp_path / "mw" / "m.ckpt.worker1.tmp").exists()
    assert f"model: {output}" in outputs[0] and f"model: {output}" not in outputs[1]


def test_slurm_task_count(monkeypatch):
    from model.runtime import slurm_task_count

    assert slurm_task_count({}) == 1
    assert slurm_task_count({"SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "8"}) == 4
    # An sbatch script's own shell (no srun step): the allocation's tasks are not this command's.
    assert slurm_task_count({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "7"}) == 1
    assert slurm_task_count({"SLURM_NTASKS": "3", "SLURM_STEP_ID": "0"}) == 3
    with pytest.raises(ModelError, match="not a number"):
        slurm_task_count({"SLURM_STEP_NUM_TASKS": "two"})


def test_evaluate_refuses_a_multi_task_srun_in_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    (tmp_path / "records").mkdir()
    proc = subprocess.run([*CLI, "evaluate", "-m", str(tmp_path / "m.keras"), "-i", str(tmp_path / "records")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: evaluate runs on one machine (one or several GPUs: --strategy auto or mirrored); unset TF_CONFIG "
        "for it, or run it as one task (srun -n 1)"]


def _slurm_job_with_free_ports(tasks: int) -> int:
    """A SLURM_JOB_ID whose task ports (model.runtime.SlurmResolver) are free on 127.0.0.1."""
    from model.runtime import PORTS_PER_JOB, SLURM_PORT_BASE, SLURM_PORT_JOBS

    for job in range(1000 + os.getpid() % 3000, 1000 + os.getpid() % 3000 + SLURM_PORT_JOBS):
        base = SLURM_PORT_BASE + (job % SLURM_PORT_JOBS) * PORTS_PER_JOB
        try:
            for port in range(base, base + tasks):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return job
    raise RuntimeError("no free ports")


def test_two_slurm_tasks_end_with_identical_weights(records_dir, slim_t7, tmp_path):
    """What `srun -n 2 python cli.py train ...` gives each task: SLURM's step variables, no TF_CONFIG.
    TensorFlow's SlurmClusterResolver reads them (TF 2.21's expands SLURM_STEP_NODELIST itself:
    it runs no `scontrol`)."""
    output = tmp_path / "slurm" / "m.keras"
    command = [*CLI, "train", "-w", slim_t7, "-i", records_dir, "-o", str(output), "-e", "1", "-b1", "8",
               "--no-augment", "--checkpoint-every", "4"]
    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG" and not k.startswith("SLURM_")}
    step = {"SLURM_JOB_ID": str(_slurm_job_with_free_ports(2)), "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2",
            "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_STEP_TASKS_PER_NODE": "2",
            "SLURM_NODELIST": "127.0.0.1"}
    outputs = _two_processes_train(command, [{**base, **step, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
                                             for rank in range(2)])
    _equal_digests_on_two_workers(outputs)
    assert output.exists() and tf.train.latest_checkpoint(str(tmp_path / "slurm" / "m.ckpt"))
    assert f"model: {output}" in outputs[0] and f"model: {output}" not in outputs[1]
