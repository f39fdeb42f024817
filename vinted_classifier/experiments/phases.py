"""Which weights a two-phase run keeps, and the fine-tune learning-rate warm-up.

Phase 2 (fine-tuning) has to *beat* phase 1's best validation score to be kept: its checkpoint
and early stopping start from phase 1's value as their baseline. When no fine-tune epoch beats
it, the phase-1 weights are the run's model. On a large real-photo set one fine-tune epoch
lowered validation top-1 and the old code kept it anyway (issue 13).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import keras


def is_better(value: float, reference: float | None, mode: str) -> bool:
    """Strict improvement, as Keras' callbacks count it (a tie is not an improvement)."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if reference is None:
        return True
    return value < reference if mode == "min" else value > reference


def kept_epoch(values: list[float], mode: str, *, restored_best: bool) -> tuple[int, float]:
    """(epoch index, monitored value) of the weights a phase ends with.

    With early stopping's ``restore_best_weights`` that is the first best epoch; without it, the last.
    """
    if not values:
        raise ValueError("no epochs: the monitored metric has no values")
    if not restored_best:
        return len(values) - 1, float(values[-1])
    best = 0
    for index, value in enumerate(values):
        if is_better(value, values[best], mode):
            best = index
    return best, float(values[best])


@dataclass(frozen=True)
class PhaseChoice:
    """Which phase's weights became the run's model, and the numbers that decided it."""

    kept_phase: str  # "head" or "finetune"
    monitor: str
    mode: str
    head_value: float | None  # phase 1's monitored value, measured on the full model (the baseline)
    finetune_values: list[float]
    finetune_best_epoch: int | None  # index within phase 2, among the epochs that beat the baseline

    @property
    def finetune_best_value(self) -> float | None:
        return None if self.finetune_best_epoch is None else self.finetune_values[self.finetune_best_epoch]

    def describe(self) -> str:
        if self.kept_phase == "head" and self.finetune_values:
            return (
                f"no fine-tune epoch beat phase 1's {self.monitor}={self.head_value:.4f} "
                f"(fine-tune: {', '.join(f'{v:.4f}' for v in self.finetune_values)}): "
                "keeping the phase-1 weights"
            )
        if self.kept_phase == "head":
            return f"phase-1 weights are the model ({self.monitor}={self.head_value})"
        baseline = "no phase 1" if self.head_value is None else f"phase 1 {self.head_value:.4f}"
        assert self.finetune_best_epoch is not None  # kept_phase == "finetune"
        return (
            f"fine-tune epoch {self.finetune_best_epoch + 1} is the model: {self.monitor}="
            f"{self.finetune_best_value:.4f} ({baseline})"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "finetune_best_value": self.finetune_best_value}


def choose_phase(monitor: str, mode: str, head_value: float | None, finetune_values: list[float]) -> PhaseChoice:
    """Keep the fine-tuned weights only if one of their epochs strictly beats phase 1's value."""
    best = None
    for index, value in enumerate(finetune_values):
        if is_better(value, head_value, mode) and (best is None or is_better(value, finetune_values[best], mode)):
            best = index
    kept = "head" if best is None else "finetune"
    return PhaseChoice(
        kept,
        monitor,
        mode,
        None if head_value is None else float(head_value),
        [float(v) for v in finetune_values],
        best,
    )


def warmup_steps(warmup_epochs: float, train_rows: int, batch_size: int) -> int:
    """Optimizer steps in ``warmup_epochs`` epochs (a partial last batch is a step)."""
    if warmup_epochs < 0:
        raise ValueError(f"warm-up epochs must be >= 0, got {warmup_epochs}")
    return math.ceil(warmup_epochs * math.ceil(train_rows / batch_size))


def warmup_learning_rate(target: float, steps: int, start_fraction: float = 0.1):
    """A learning rate that rises linearly from ``start_fraction * target`` to ``target`` over
    ``steps`` optimizer steps, then stays at ``target`` (a float when ``steps`` is 0).

    Fresh Adam moments make the first fine-tune steps the roughest; unfrozen conv weights
    take that jolt before the head has adapted to them. Keras' CosineDecay with ``alpha=1``
    is exactly this (warm-up, then a constant), and it is serialisable with the model.
    """
    if steps <= 0:
        return target
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=target * start_fraction,
        decay_steps=1,
        alpha=1.0,
        warmup_target=target,
        warmup_steps=steps,
    )
