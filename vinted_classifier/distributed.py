"""Which ``tf.distribute`` strategy a training process uses, and what that means for its files.

* ``TF_CONFIG`` names more than one task (the standard way TF jobs run on Kubernetes, Vertex AI or
  by hand: ``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}``)
  -> ``MultiWorkerMirroredStrategy``: every worker holds a copy of the model, gradients are
  all-reduced over the network each step.
* otherwise several local GPUs -> ``MirroredStrategy``; else no strategy (the default one).

Under several workers:

* ``train.batch_size`` stays the *global* batch: each step's batch is split across the replicas
  (per-replica batch = batch_size / replicas), so a run's optimisation is the same on 1 or N workers.
* every input dataset is sharded by data (``shard_by_data``): the feature cache and the image list
  are single files/lists, which file-based sharding cannot split.
* the chief (worker 0, or the ``chief`` task) alone writes the run folder; another worker trains in a
  scratch folder of its own (feature cache, BackupAndRestore state, checkpoints), kept until it
  finishes so that a restarted worker resumes from it, and removed then.
* every worker computes the frozen-backbone feature cache in full (each one needs every row to
  shuffle over; see docs/scaling.md for the cost).

The strategy must exist before TensorFlow runs any op (collective ops are configured at start-up):
create it first thing in the process (``train.train`` does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

# Keras's TensorFlow trainer internals, patched below for MultiWorkerMirroredStrategy (no public hook).
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

from .model import load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    """This process's place in the cluster that ``TF_CONFIG`` describes (one worker when unset)."""

    num_workers: int = 1
    task_type: str = "worker"
    task_index: int = 0

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    @property
    def is_chief(self) -> bool:
        """The ``chief`` task, or worker 0 when the cluster has no chief (TensorFlow's convention)."""
        return self.task_type == "chief" or (
            self.task_type == "worker" and self.task_index == 0 and not self._has_chief
        )

    _has_chief: bool = False

    def describe(self) -> str:
        if not self.multi_worker:
            return "single worker"
        return f"{self.task_type} {self.task_index} of {self.num_workers} ({'chief' if self.is_chief else 'not chief'})"


def cluster_from_env(environ: dict[str, str] | None = None) -> ClusterInfo:
    """Parse ``TF_CONFIG``; a malformed one is an error that quotes it (a typo must not train alone)."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return ClusterInfo()
    try:
        config = json.loads(raw)
        cluster, task = config.get("cluster", {}), config.get("task", {})
        task_type, task_index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is not valid ({type(error).__name__}: {error}): {raw!r}") from None
    trainers = {name: list(cluster.get(name, [])) for name in ("chief", "worker")}
    if task_type not in trainers:
        raise ValueError(f"TF_CONFIG task type {task_type!r}: only 'chief' and 'worker' train (got {raw!r})")
    if not 0 <= task_index < len(trainers[task_type]):
        raise ValueError(
            f"TF_CONFIG task index {task_index} is outside cluster[{task_type!r}] "
            f"({len(trainers[task_type])} address(es)): {raw!r}"
        )
    return ClusterInfo(
        len(trainers["chief"]) + len(trainers["worker"]), task_type, task_index, _has_chief=bool(trainers["chief"])
    )


def make_strategy(cluster: ClusterInfo):
    """``MultiWorkerMirroredStrategy`` for a multi-worker cluster, else None (decided later, per host)."""
    if not cluster.multi_worker:
        return None
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    patch_keras_first_batch_build()
    log.info(
        "training on %s with MultiWorkerMirroredStrategy: %d replica(s) in sync",
        cluster.describe(),
        strategy.num_replicas_in_sync,
    )
    return strategy


def patch_keras_first_batch_build() -> None:
    """Let Keras 3.15's ``fit``/``evaluate`` start and log under ``MultiWorkerMirroredStrategy``.

    Two of Keras's steps reduce whole structures across replicas, which that strategy with more
    than one worker cannot do (``_patch_first_batch_build``, ``_patch_log_reduction``); other
    strategies keep Keras's own code. Idempotent.
    """
    trainer = tf_trainer.TensorFlowTrainer
    if getattr(trainer._maybe_symbolic_build, "multi_worker_patch", False):
        return
    _patch_first_batch_build(trainer)
    _patch_log_reduction()


def _local_value(strategy, value):
    """This worker's first replica's part of a distributed value (a plain value as it is)."""
    return (
        strategy.experimental_local_results(value)[0] if isinstance(value, tf.distribute.DistributedValues) else value
    )


def _patch_first_batch_build(trainer) -> None:
    """Before the first step Keras builds the model from one batch, which it gets by
    ``strategy.reduce("MEAN", (x, y), axis=None)`` on the whole nested batch
    (``TensorFlowTrainer._maybe_symbolic_build``). MultiWorkerMirroredStrategy with more than one
    worker only reduces single distributed values and fails on the structure ("Attempt to convert a
    value (PerReplica...) to a Tensor"). Only the shapes and dtypes matter there, so under that
    strategy the batch is taken from this worker's first replica instead.
    """
    original = trainer._maybe_symbolic_build

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return original(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tree.map_structure(lambda value: _local_value(strategy, value), next(batches))
            break
        return original(self, iterator=None, data_batch=data_batch)

    maybe_symbolic_build.multi_worker_patch = True  # type: ignore[attr-defined]
    trainer._maybe_symbolic_build = maybe_symbolic_build


def _patch_log_reduction() -> None:
    """Each step's logs (scalar losses and metrics) are averaged over the workers with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on a scalar ("Invalid reduction
    dimension 0 for input with 0 dimensions"). A scalar's mean over replicas is ``axis=None``.
    """
    keras_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction="auto"):
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or reduction not in ("auto", "mean"):
            return keras_reduce(values, strategy, reduction=reduction)

        def reduce_one(value):
            # With one replica per worker, a step's output is a plain tensor, not a PerReplica.
            local = _local_value(strategy, value)
            if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return keras_reduce(value, strategy, reduction=reduction)

        return tree.map_structure(reduce_one, values)

    tf_trainer.reduce_per_replica = reduce_per_replica


def scope(strategy, hardware: dict):
    """The strategy's scope: the multi-worker one, else MirroredStrategy over several GPUs, else a no-op."""
    if strategy is not None:
        return strategy.scope()
    if len(hardware.get("gpus", [])) > 1:
        mirrored = tf.distribute.MirroredStrategy()
        log.info("training on %d GPUs with MirroredStrategy", mirrored.num_replicas_in_sync)
        return mirrored.scope()
    return contextlib.nullcontext()


def barrier(strategy) -> None:
    """Wait until every worker gets here (a one-number all-reduce); no-op without a multi-worker strategy.

    Workers wait for the chief to finish writing the run, so that no worker leaves early (the
    chief's coordination service would report it as crashed) and a Job completes all pods together.
    """
    if strategy is None:
        return
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def chief_values(strategy, is_chief: bool, values: list[float]) -> list[float]:
    """The chief's ``values`` on every worker (an all-reduce SUM where the others add zeros).

    Each of the chief's local replicas adds its share (``1 / local replicas``), so the sum is the
    chief's numbers whatever the number of GPUs per worker. Every worker must call it together.
    """
    local_replicas = len(strategy.extended.worker_devices)
    share = tf.constant([float(v) / local_replicas if is_chief else 0.0 for v in values], tf.float64)
    total = strategy.reduce("SUM", strategy.run(lambda: tf.identity(share)), axis=None)
    return [float(v) for v in total.numpy()]


def agreement(strategy, cluster: ClusterInfo):
    """``values -> the chief's values`` for a multi-worker run (the chief plans, everyone follows); else None."""
    if strategy is None or not cluster.multi_worker:
        return None
    return lambda values: chief_values(strategy, cluster.is_chief, values)


def worker_run_dir(run_dir: Path, cluster: ClusterInfo) -> Path:
    """Where this process writes: the run folder for the chief, a scratch folder of its own otherwise."""
    if cluster.is_chief:
        return Path(run_dir)
    return Path(run_dir).parent / ".workers" / f"{Path(run_dir).name}-{cluster.task_type}{cluster.task_index}"


def shard_by_data(dataset):
    """Shard a dataset across workers element by element (after the global batch is split per replica)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def local_model(model, saved_path: Path, strategy):
    """A copy of ``model`` outside the multi-worker strategy, for chief-only evaluation.

    Under ``MultiWorkerMirroredStrategy`` ``predict`` gathers outputs from every worker (a collective
    op), which would wait forever for workers that have finished; the saved file loads as a plain model.
    """
    if strategy is None:
        return model
    return load_model(saved_path, compile=False)
