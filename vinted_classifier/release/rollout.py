"""Version labels (``stable``, ``canary``) in the generated model config; promote and roll back.

The state of a model's releases lives in ``<saved_model_dir>/releases/<model_name>.json``: the
labels and every released version in order. From it the model config file is regenerated
(``serving_files.model_server_config``): a ``specific`` version policy keeping the stable, canary
and previous stable versions loaded, and ``version_labels`` naming them. Servers started with
``--model_config_file`` (``vinted serve`` does this) re-read it every
``--model_config_file_poll_wait_seconds``; clients that ask for ``/labels/stable`` follow a
rollback without a restart. Labels only ever point at versions already loaded: a new version
enters the policy first, and a version leaves the policy only after no label points at it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from ..serving_files import write_serving_config
from ..utils import write_json

STATE_DIR = "releases"


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def state_path(saved_model_dir: Path, model_name: str) -> Path:
    return Path(saved_model_dir) / STATE_DIR / f"{model_name}.json"


def load_state(saved_model_dir: Path, model_name: str) -> dict:
    path = state_path(saved_model_dir, model_name)
    if not path.is_file():
        return {"model_name": model_name, "labels": {}, "released": [], "events": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"release state {path} is not valid JSON: {error}") from None


def save_state(saved_model_dir: Path, model_name: str, state: dict) -> None:
    write_json(state_path(saved_model_dir, model_name), state)


def live_versions(state: dict) -> list[int]:
    """Released versions still in the served path, oldest first."""
    return [entry["version"] for entry in state["released"] if not entry.get("removed")]


def previous_stable(state: dict) -> int | None:
    """The live released version before the stable one (the rollback target)."""
    stable = state["labels"].get("stable")
    live = [v for v in live_versions(state) if v != state["labels"].get("canary")]
    before = [v for v in live if stable is not None and v < stable]
    return before[-1] if before else None


def served_versions(state: dict) -> list[int]:
    """What the policy keeps loaded: stable, canary and the previous stable (an instant rollback)."""
    keep = {state["labels"].get("stable"), state["labels"].get("canary"), previous_stable(state)}
    return sorted(v for v in keep if v is not None)


def write_model_config(saved_model_dir: Path, model_name: str, state: dict, versions: list[int] | None = None) -> Path:
    labels = {key: value for key, value in state["labels"].items() if value is not None}
    return write_serving_config(saved_model_dir, model_name, versions or served_versions(state), labels)


def record_push(
    saved_model_dir: Path,
    model_name: str,
    version: int,
    *,
    canary: bool,
    forced: bool,
    report_file: str,
    adopted: Sequence[int] = (),
    candidate: str | None = None,
) -> dict:
    """Add a pushed version to the state; label it ``canary`` or ``stable``; regenerate the config.

    ``adopted``: versions already in the served path from before the gate (the first release keeps
    the newest of them as the previous stable, so it can be rolled back to).
    """
    state = load_state(saved_model_dir, model_name)
    known = {entry["version"] for entry in state["released"]}
    for old in sorted(set(adopted) - known):
        state["released"].append({"version": old, "utc": utc_now(), "adopted": True})
    if not state["labels"].get("stable") and state["released"]:
        state["labels"]["stable"] = state["released"][-1]["version"]
    state["released"].append(
        {"version": version, "utc": utc_now(), "forced": forced, "report": report_file, "candidate": candidate}
    )
    before = dict(state["labels"])
    # Step 1: load the new version under the old labels (a label may only name a loaded version).
    write_model_config(saved_model_dir, model_name, state, versions=sorted({*served_versions(state), version}))
    if canary and state["labels"].get("stable"):
        state["labels"]["canary"] = version
    else:
        state["labels"] = {"stable": version}
    state["events"].append(
        {
            "utc": utc_now(),
            "event": "canary" if "canary" in state["labels"] else "push",
            "version": version,
            "forced": forced,
            "labels_before": before,
            "labels_after": dict(state["labels"]),
        }
    )
    save_state(saved_model_dir, model_name, state)
    write_model_config(saved_model_dir, model_name, state)
    return state


def promote(saved_model_dir: Path, model_name: str) -> dict:
    """The canary becomes stable."""
    state = load_state(saved_model_dir, model_name)
    canary = state["labels"].get("canary")
    if canary is None:
        raise ValueError(f"{state_path(saved_model_dir, model_name)}: no canary version to promote")
    before = dict(state["labels"])
    state["labels"] = {"stable": canary}
    state["events"].append(
        {
            "utc": utc_now(),
            "event": "promote",
            "version": canary,
            "labels_before": before,
            "labels_after": dict(state["labels"]),
        }
    )
    save_state(saved_model_dir, model_name, state)
    write_model_config(saved_model_dir, model_name, state, versions=sorted({*served_versions(state), *before.values()}))
    return state


def rollback(saved_model_dir: Path, model_name: str, *, remove: bool = False) -> dict:
    """Point ``stable`` at the previous released version (a canary is dropped first, if any).

    ``remove``: also take the rolled-back version out of the served path, after the label moved:
    its folder is renamed to a hidden name (servers skip it) and then deleted.
    """
    saved_model_dir = Path(saved_model_dir)
    state = load_state(saved_model_dir, model_name)
    labels = state["labels"]
    if labels.get("canary") is not None:
        bad, target = labels["canary"], labels["stable"]
    else:
        bad, target = labels.get("stable"), previous_stable(state)
        if target is None:
            raise ValueError(
                f"{state_path(saved_model_dir, model_name)}: no earlier released version to roll back to "
                f"(live versions: {live_versions(state)})"
            )
    before = dict(labels)
    state["labels"] = {"stable": target}
    state["events"].append(
        {
            "utc": utc_now(),
            "event": "rollback",
            "version": bad,
            "to": target,
            "removed": remove,
            "labels_before": before,
            "labels_after": dict(state["labels"]),
        }
    )
    # The label moves first, with the bad version still loaded: requests by label never miss.
    save_state(saved_model_dir, model_name, state)
    write_model_config(saved_model_dir, model_name, state, versions=sorted({*served_versions(state), bad}))
    if remove:
        for entry in state["released"]:
            if entry["version"] == bad:
                entry["removed"] = utc_now()
        save_state(saved_model_dir, model_name, state)
        write_model_config(saved_model_dir, model_name, state)
        remove_version(saved_model_dir / model_name / str(bad))
    return state


def remove_version(version_dir: Path) -> None:
    """Out of the served path in one rename (to a hidden name servers skip), then deleted."""
    if not version_dir.is_dir():
        return
    hidden = version_dir.parent / f".removed-{version_dir.name}-{uuid.uuid4().hex[:8]}"
    os.rename(version_dir, hidden)
    shutil.rmtree(hidden, ignore_errors=True)
