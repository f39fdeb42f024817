"""The time budget: ``vinted train`` with ``train.time_budget_minutes``, planned vs actual minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import harness

TITLE = "13. Time budget: planned vs actual minutes"
NOTES = """
Each row is one `vinted train --set train.time_budget_minutes=B` in its own process on the demo set
(2,404 / 516 / 516 images) or the 10x demo set (24,052 / 5,154 / 5,154, `bench/.cache/demo_x10`),
with an empty feature store of its own (nothing reused), tracking off, every other setting the
default (VGG19 160x128, the host's precision). *Planned* is what the run itself planned after
measuring its step times: `run.json["time_budget"]`'s `seconds_before_plan + plan.predicted_seconds`;
*actual* is the train command's own `total_seconds` (the clock the budget counts, from `train()`'s
start; the process's wall time, Python and TensorFlow imports included, is in the note). The goal is
the issue's: no run over its plan by more than 15%. Early stopping can end the head epochs before
the planned count, so a run may finish well under its plan; the note gives the plan re-priced with
the head epochs actually run, which is what the cost model is accountable for. A refused run
(`BudgetTooSmall`: the smallest useful run is predicted to miss by more than 15%) has no ratio; its
row is the seconds until the refusal, and the note quotes the minimum it named. Held-out top-1 /
top-2 / tag macro-F1 are beside each run. Each row's name says the CPU's instruction set: `AVX2` rows
ran under `ONEDNN_MAX_CPU_ISA=AVX2` (the AVX2-only CPU simulated, float32), `native` ones on the
machine's own CPU and precision.
"""
TIMEOUT_S = 4 * 3600  # four trainings of up to 15 minutes each, plus the 10x set's data checks


def _runs(ctx: harness.Context) -> list[tuple[str, Path, float]]:
    """(label, dataset, budget minutes)."""
    if ctx.smoke:
        return [("demo_s0.02", harness.demo_dir(ctx), 1.5)]
    demo, x10 = harness.demo_dir(ctx), harness.ensure_demo(ctx.cache / "demo_x10", 10.0)
    return [("demo", demo, 5.0), ("demo", demo, 15.0), ("demo x10", x10, 5.0), ("demo x10", x10, 15.0)]


def _command(ctx: harness.Context, data_dir: Path, minutes: float, name: str) -> list[str]:
    sets = [
        f"data.data_dir={data_dir}",
        f"output_dir={ctx.work / 'runs'}",
        f"run_name={name}",
        f"train.time_budget_minutes={minutes}",
        f"train.feature_cache_dir={ctx.work / 'store' / name}",
        "tracking.enabled=false",
    ]
    smoke = ["--config", "configs/smoke.yaml", "--set", "model.weights=none"] if ctx.smoke else []
    return [sys.executable, "-m", "vinted_classifier", "train", *smoke, *(a for s in sets for a in ("--set", s))]


def _epochs_run(run_dir: Path) -> int:
    history = json.loads((run_dir / "history.json").read_text())
    return len(history.get("loss", []))


def _priced_as_run(budget: dict, head_epochs_run: int) -> float:
    """The plan's seconds with the head epochs the run actually trained (early stopping ends them)."""
    plan = budget["plan"]
    finetune = budget.get("after_phase1", {}).get("finetune_epochs", plan["finetune_epochs"])
    return (
        budget["seconds_before_plan"]
        + plan["caching_seconds"]
        + head_epochs_run * plan["head_epoch_seconds"]
        + plan["evaluation_seconds"]
        + (plan["finetune_baseline_seconds"] + finetune * plan["finetune_epoch_seconds"] if finetune else 0.0)
    )


def _isa() -> str:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "native")


def _run_row(ctx: harness.Context, label: str, data_dir: Path, minutes: float) -> dict:
    name = f"{label.replace(' ', '_')}_{minutes:g}min"
    log_path = ctx.work / f"{name}.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        completed = subprocess.run(
            _command(ctx, data_dir, minutes, name),
            cwd=harness.PROJECT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT_S,
            check=False,
        )
    wall = time.perf_counter() - started
    log_text = log_path.read_text(errors="replace")
    row_name = f"{label}, {minutes:g} min budget ({_isa()})"
    if completed.returncode != 0:
        refusal = [line for line in log_text.splitlines() if "cannot fit even the smallest run" in line]
        if not refusal:
            raise RuntimeError(f"{name} failed (exit {completed.returncode}):\n{log_text[-3000:]}")
        return harness.row(
            "budget",
            f"{row_name}: refused",
            wall,
            "s",
            note=refusal[-1].split("error: ", 1)[-1].strip(),
        )
    run_dir = ctx.work / "runs" / name
    run = json.loads((run_dir / "run.json").read_text())
    held_out = json.loads((run_dir / "metrics.json").read_text())["holdout"]
    budget, plan = run["time_budget"], run["time_budget"]["plan"]
    planned = budget["seconds_before_plan"] + plan["predicted_seconds"]
    epochs = _epochs_run(run_dir)
    as_run = _priced_as_run(budget, epochs)
    partial = f" + 1 for {plan['partial_view_images']}" if plan.get("partial_view_images") else ""
    return harness.row(
        "budget",
        row_name,
        run["total_seconds"] / 60,
        "min",
        baseline_name="planned",
        baseline_value=planned / 60,
        goal=1.15,
        higher_is_better=False,
        note=(
            f"{plan['train_images']} train image(s){' (subsample)' if plan['subsampled'] else ''} x "
            f"(1 + {plan['augmented_views']} view(s){partial}), {epochs} of {plan['head_epochs']} head epoch(s), "
            f"{plan['finetune_epochs']} fine-tune; backbone "
            f"{budget['step_times']['backbone_seconds_per_image'] * 1e3:.1f} ms/image; priced with the epochs run "
            f"{as_run / 60:.1f} min ({run['total_seconds'] / as_run:.2f}x); process wall {wall / 60:.1f} min; "
            f"held-out {held_out['top1_accuracy']:.3f} / {held_out['top2_accuracy']:.3f} / "
            f"{held_out['tags']['macro_f1']:.3f}"
        ),
    )


def run(ctx: harness.Context) -> list[dict]:
    return [_run_row(ctx, label, data_dir, minutes) for label, data_dir, minutes in _runs(ctx)]


if __name__ == "__main__":
    raise SystemExit(harness.child_main(sys.modules[__name__]))
