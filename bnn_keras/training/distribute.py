"""Data-parallel training: choosing a `tf.distribute` strategy, chief/worker roles, LR scaling.

Usage (the order matters):

    strategy = make_strategy("auto")          # FIRST, before any other TensorFlow op
    with strategy.scope():
        model = build_model(...)
        model.compile(optimizer=recipes.build_optimizer(...), ...)
    model.fit(dataset_with_global_batch, ...)

`MultiWorkerMirroredStrategy` must be created at program start, before TensorFlow creates any
op, tensor or device context (even `tf.constant`, `set_random_seed` is fine): it configures the
eager context's cluster, which can no longer be changed once the context is initialized. Every
worker runs the same program with its own `TF_CONFIG`, sees the same data pipeline (Keras shards
it per worker), and must call `fit` and `model.save` alike (saving reads variables with
collective ops). Only the chief keeps its files; the others write to a temporary folder
(`output_dir`) that `cleanup_output_dir` removes.

Batch sizes given to the user-facing options are *global* (summed over all replicas), so a run
means the same thing on one GPU or on eight.

References:
    - Multi-worker training with Keras:
      https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras
    - Goyal et al., Accurate, Large Minibatch SGD (linear scaling rule):
      https://arxiv.org/abs/1706.02677
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import tensorflow as tf

from bnn_keras.errors import BnnError

__all__ = [
    "STRATEGIES",
    "cleanup_output_dir",
    "is_chief",
    "make_strategy",
    "output_dir",
    "task_info",
    "worker_count",
]

STRATEGIES = ("auto", "default", "mirrored", "multi-worker")
_WORKER_TASKS = ("chief", "worker")


def _tf_config() -> Optional[Dict[str, Any]]:
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        raise BnnError("TF_CONFIG is not valid JSON; see the multi-worker Keras guide.") from None
    if not isinstance(config, dict):
        raise BnnError(f"Expected TF_CONFIG to be a JSON object, got {type(config).__name__}.")
    return config


def _cluster_workers(config: Optional[Dict[str, Any]]) -> int:
    cluster = (config or {}).get("cluster") or {}
    return sum(len(cluster.get(task, ())) for task in _WORKER_TASKS)


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """A distribution strategy by name.

    - "auto": `MultiWorkerMirroredStrategy` if `TF_CONFIG` describes more than one worker, else
      `MirroredStrategy` if this machine has more than one GPU, else the default strategy.
    - "default": the default (no-op) strategy: one device.
    - "mirrored": `MirroredStrategy` over all local GPUs (the CPU if there are none).
    - "multi-worker": `MultiWorkerMirroredStrategy`; needs `TF_CONFIG` with a `cluster` and a
      `task`.

    Create it before any other TensorFlow op (see the module docstring).

    Args:
        name: One of `STRATEGIES`.

    Returns:
        The strategy.

    Raises:
        BnnError: unknown name, or "multi-worker" without a usable `TF_CONFIG`.
    """
    if name not in STRATEGIES:
        raise BnnError(f"Unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}.")
    config = _tf_config()
    if name == "auto":
        if _cluster_workers(config) > 1:
            name = "multi-worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not config or "cluster" not in config or "task" not in config:
        raise BnnError(
            "The multi-worker strategy needs TF_CONFIG, e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
            "[\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' "
            "on the first machine (index 1 on the second); use `strategy` auto to train locally."
        )
    if _cluster_workers(config) < 1:
        raise BnnError("TF_CONFIG's cluster lists no 'chief' or 'worker' tasks.")
    return tf.distribute.MultiWorkerMirroredStrategy()


def task_info(strategy: tf.distribute.Strategy) -> Dict[str, Any]:
    """`{"type": ..., "index": ...}` of this process (type None outside a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None)
    return {"type": task_type, "index": 0 if task_id is None else int(task_id)}


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files.

    The chief is the "chief" task, or worker 0 when the cluster has no "chief" task (Keras'
    convention); any single-process strategy is its own chief.
    """
    task = task_info(strategy)
    if task["type"] in (None, "chief"):
        return True
    if task["type"] != "worker":
        return False
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task["index"] == 0 and "chief" not in cluster


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """Number of worker processes (chief included) training together; 1 without a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or task_info(strategy)["type"] is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return sum(len(cluster.get(task, ())) for task in _WORKER_TASKS) or 1


def output_dir(run_dir: Union[str, os.PathLike], strategy: tf.distribute.Strategy) -> Path:
    """Where this process writes: `run_dir` (created) on the chief, else a new temporary folder.

    Non-chief workers must still save (see the module docstring), but into a folder of their
    own, so that two processes never write the same file; remove it with `cleanup_output_dir`.
    """
    run_dir = Path(run_dir)
    if is_chief(strategy):
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    task = task_info(strategy)
    return Path(tempfile.mkdtemp(prefix=f"bnn-{task['type']}{task['index']}-"))


def cleanup_output_dir(
    path: Union[str, os.PathLike],
    run_dir: Union[str, os.PathLike],
    strategy: tf.distribute.Strategy,
) -> None:
    """Removes a non-chief worker's temporary `output_dir` (never the chief's `run_dir`)."""
    if not is_chief(strategy) and Path(path) != Path(run_dir):
        shutil.rmtree(path, ignore_errors=True)
