"""Where the network runs and how: tf.distribute strategy, Keras dtype policy, the devices seen,
XLA and augmentation placement, and how many steps or batches one tf.function call runs.

Both are chosen from the machine by default ("auto") and can be forced from the command line.
The strategy must be created before TensorFlow runs anything else (MultiWorkerMirroredStrategy
configures the collective ops at start-up), and the dtype policy must be set before the model
is built (layers take the global policy when they are created).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import keras
import tensorflow as tf

from model.defaults import AUTO_CALL_SECONDS, PRECISIONS, STRATEGIES
from model.errors import ModelError


def cluster_from_env() -> dict:
    """The cluster spec of TF_CONFIG ({} when unset); ModelError when it is not valid JSON."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        config = json.loads(raw)
        cluster = config.get("cluster", {}) if isinstance(config, dict) else None
        if not isinstance(cluster, dict):
            raise ValueError("'cluster' is not an object")
    except ValueError as err:
        raise ModelError(f"TF_CONFIG is not valid ({err}); it must be JSON like "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}')
    return cluster


def cluster_task_count(cluster: dict) -> int:
    """Number of tasks (chief + workers) of a TF_CONFIG cluster spec."""
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


# SLURM: the port of a job's first task on each node, spread by job id so that two jobs sharing a
# node do not collide (up to PORTS_PER_JOB tasks per node).
SLURM_PORT_BASE = 12000
SLURM_PORT_JOBS = 5000
PORTS_PER_JOB = 8


def slurm_task_count(env=None) -> int:
    """Tasks of the SLURM job step this process is one of (1 outside SLURM). SLURM_STEP_NUM_TASKS
    is set inside `srun`; SLURM_NTASKS alone (an sbatch script's own shell, no srun) counts the
    allocation's tasks, not processes that run this command, so it counts only within a step."""
    env = os.environ if env is None else env
    raw = env.get("SLURM_STEP_NUM_TASKS") or (env.get("SLURM_NTASKS") if env.get("SLURM_STEP_ID") else None)
    try:
        return int(raw) if raw else 1
    except ValueError:
        raise ModelError(f"SLURM_STEP_NUM_TASKS/SLURM_NTASKS is not a number ({raw!r}); run inside srun") from None


def cluster_tasks() -> int:
    """Processes that together run one command: TF_CONFIG's cluster, else the SLURM job step."""
    tf_config = cluster_task_count(cluster_from_env())
    return tf_config if tf_config else slurm_task_count()


class SlurmResolver(tf.distribute.cluster_resolver.SlurmClusterResolver):
    """TensorFlow's SLURM resolver (tasks, hosts and this task's rank from SLURM's step variables:
    SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE), with two
    changes. The GPUs are those TensorFlow sees (SLURM's --gpus-per-task binds them per task through
    CUDA_VISIBLE_DEVICES): the parent asks nvidia-smi, absent on a CPU node, and hands out no task
    slot at all when a node has no GPU. And the port is spread by SLURM_JOB_ID (two jobs on a node)."""

    def __init__(self):
        self._local_gpus = len(tf.config.list_physical_devices("GPU"))
        job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
        # "2(x3),1": 2 tasks on each of 3 nodes, then 1; the parent gives a node one task slot per
        # gpus_per_task GPUs, so the (nominal) GPUs per node must cover the most tasks on a node.
        most_here = max(int(part.split("(")[0]) for part in os.environ.get("SLURM_STEP_TASKS_PER_NODE", "1").split(","))
        per_task = max(1, self._local_gpus)
        super().__init__(port_base=SLURM_PORT_BASE + (job % SLURM_PORT_JOBS) * PORTS_PER_JOB,
                         gpus_per_node=per_task * most_here, gpus_per_task=per_task, auto_set_gpu=False)

    def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
        return {"GPU": self._local_gpus}


def _multi_worker(slurm: bool) -> tf.distribute.Strategy:
    where = "the SLURM job step (run under srun: SLURM_PROCID, SLURM_STEP_NODELIST...)" if slurm else \
        "TF_CONFIG (every worker listed, this task's type and index)"
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=SlurmResolver() if slurm else None)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ModelError(f"cannot start MultiWorkerMirroredStrategy ({err}); check {where}") from None


def _local_devices() -> list[str]:
    """Local devices for MirroredStrategy: every GPU, else every (logical) CPU device."""
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def select_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: MultiWorkerMirroredStrategy when TF_CONFIG names a cluster of more than one task, or
    when this is one of several tasks of a SLURM job step (srun: SlurmResolver, TF_CONFIG wins when
    both are set), MirroredStrategy on several local GPUs, else the default strategy; or force one."""
    if name not in STRATEGIES:
        raise ModelError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    tf_config = cluster_task_count(cluster_from_env())   # a malformed TF_CONFIG is bad input, not a traceback
    slurm = not tf_config and slurm_task_count() > 1
    if name == "auto":
        if tf_config > 1 or slurm:
            name = "multiworker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multiworker":
        return _multi_worker(slurm)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=_local_devices())
    return tf.distribute.get_strategy()


@dataclass(frozen=True)
class TaskInfo:
    """This process's place in the cluster."""

    task_type: str | None
    task_id: int
    workers: int          # input pipelines = worker processes
    is_chief: bool        # the one that writes outputs and the real checkpoints


def task_info(strategy: tf.distribute.Strategy) -> TaskInfo:
    """Who this process is: a single process is its own chief; under MultiWorkerMirroredStrategy
    the chief is task "chief", or worker 0 when the cluster has no chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return TaskInfo(None, 0, 1, True)
    cluster = resolver.cluster_spec().as_dict()
    workers = cluster_task_count(cluster)
    if workers <= 1 or resolver.task_type is None:
        return TaskInfo(resolver.task_type, 0, 1, True)
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
    return TaskInfo(task_type, task_id, workers, is_chief)


def precision_for_capabilities(capabilities: list[tuple[int, int] | None]) -> str:
    """The policy for a set of GPUs, decided by the weakest: bf16 needs compute capability 8.0
    (Ampere), fast fp16 needs 7.x (Volta/Turing tensor cores); no GPU means float32."""
    if not capabilities or any(c is None for c in capabilities):
        return "float32"
    lowest = min(tuple(c) for c in capabilities)
    if lowest >= (8, 0):
        return "mixed_bfloat16"
    if lowest >= (7, 0):
        return "mixed_float16"
    return "float32"


def select_precision(name: str = "auto") -> str:
    """The dtype policy name: auto picks from the GPUs (see precision_for_capabilities); any of
    float32, mixed_float16, mixed_bfloat16 can be forced. Does not set it (see apply_precision)."""
    if name not in PRECISIONS:
        raise ModelError(f"unknown `precision` {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(details.get("compute_capability"))
    return precision_for_capabilities(capabilities)


def apply_precision(policy: str) -> str:
    """Set the Keras global dtype policy (call BEFORE building the model); returns the previous one."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    return previous


@contextmanager
def precision(policy: str) -> Iterator[None]:
    """The Keras global dtype policy set to `policy` inside the block, restored after it."""
    previous = apply_precision(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# What a user on a machine without a visible GPU reads, once, at the start of `train` and `evaluate`.
NO_GPU_NOTE = ("CPU only: no GPU visible to TensorFlow (for GPU support: pip install "
               "'gender-classifier[gpu]', which needs an NVIDIA driver; run with -v to see TensorFlow's own "
               "messages on why it found none)")


def accelerators() -> tuple[str, ...]:
    """The GPUs TensorFlow sees, described as "GPU:0 (NVIDIA A100-SXM4-40GB, compute capability 8.0)"."""
    described = []
    for index, gpu in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(gpu)
        name, capability = details.get("device_name", "unknown"), details.get("compute_capability")
        extra = f", compute capability {capability[0]}.{capability[1]}" if capability else ""
        described.append(f"GPU:{index} ({name}{extra})")
    return tuple(described)


def resolve_jit(choice: str, has_gpu: bool) -> bool:
    """--jit auto compiles the step with XLA on a GPU, where XLA hands the convolutions to cuDNN and
    fuses the head's small ops and the device-side augmentation into few kernels (not measured here:
    no GPU was lent); not on a CPU, where XLA's own convolutions measured 0.26x the step without it
    (bench/bench_train_loop.py, 2 cores)."""
    return choice == "on" or (choice == "auto" and has_gpu)


def resolve_augment_on(choice: str, has_gpu: bool) -> str:
    """--augment-on auto augments on the device when there is a GPU (the host then only moves uint8
    bytes; 2 CPU cores augment about 2,400 images/s, far less than a GPU consumes), else in the
    tf.data pipeline on the host (on a CPU-only machine the two are the same processor)."""
    if choice == "auto":
        return "device" if has_gpu else "host"
    return choice


# ---------------------------------------------------------------- call sizing
# How many steps (or batches) one tf.function call runs: the host syncs once per call, so calls
# must be long enough that its work per call vanishes, and short enough that progress keeps moving.
# Automatic sizes (AUTO_CALL_SECONDS of steps) never exceed this.
MAX_STEPS_PER_CALL = 1000


class CallSizer:
    """The size of the next call: fixed, or (auto) from the measured time per step. A caller does
    not `observe` a call that paid for tracing or for filling an input pipeline."""

    def __init__(self, fixed: int | None = None, seconds: float = AUTO_CALL_SECONDS):
        self.fixed, self.seconds, self.seconds_per_step = fixed, seconds, None

    def size(self, limit: int | None = None) -> int:
        if self.fixed is not None:
            n = self.fixed
        elif self.seconds_per_step is None:
            n = 1
        else:
            n = int(min(MAX_STEPS_PER_CALL, max(1, self.seconds / self.seconds_per_step)))
        return max(1, min(n, limit)) if limit is not None else n

    def observe(self, seconds: float, steps: int) -> None:
        if steps:
            measured = seconds / steps
            self.seconds_per_step = measured if self.seconds_per_step is None else \
                0.5 * self.seconds_per_step + 0.5 * measured
