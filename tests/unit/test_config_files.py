"""configs/*.yaml: default.yaml is the typed defaults, written out; presets stack on any base."""

from __future__ import annotations

import pytest
import yaml

from vinted_classifier.config import CONFIGS_DIR, PROJECT_ROOT, RunConfig, load_config, preset_path


def _keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and key != "loss_weights":  # loss_weights is a value, not a section
            keys |= _keys(value, f"{prefix}{key}.")
    return keys


def test_default_yaml_equals_the_typed_defaults():
    """Drift guard: change a default in config.py and default.yaml together (or this fails)."""
    assert load_config(CONFIGS_DIR / "default.yaml").model_dump() == RunConfig().model_dump()


def test_default_yaml_shows_every_key():
    written = yaml.safe_load((CONFIGS_DIR / "default.yaml").read_text())
    assert _keys(written) == _keys(RunConfig().model_dump(mode="json"))


def test_default_run_is_the_documented_one():
    train = RunConfig().train
    assert (train.head_epochs, train.finetune_epochs, train.early_stopping_patience) == (30, 2, 6)


@pytest.mark.parametrize("name", ["smoke", "tiny"])
def test_presets_change_only_what_they_name(name):
    written = yaml.safe_load(preset_path(name).read_text())
    stacked = load_config(CONFIGS_DIR / "default.yaml", presets=[name]).model_dump(mode="json")
    defaults = RunConfig().model_dump(mode="json")
    for section, values in written.items():
        for key, value in values.items():
            assert stacked[section][key] == value, f"{name}.yaml {section}.{key}"
    untouched = {s for s in defaults if s not in written}
    assert {s: stacked[s] for s in untouched} == {s: defaults[s] for s in untouched}


def test_files_stack_in_order_and_overrides_win(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("train: {head_epochs: 5, batch_size: 8}\nmodel: {image_height: 96}\n")
    second.write_text("train: {head_epochs: 7}\n")
    cfg = load_config([first, second], ["model.image_height=80"], presets=["smoke"])
    # b.yaml beats a.yaml key by key; the smoke preset comes after the files; --set comes last.
    assert (cfg.train.head_epochs, cfg.train.batch_size) == (2, 8)
    assert (cfg.model.image_height, cfg.model.image_width) == (80, 48)
    assert load_config([first, second]).train.head_epochs == 7


def test_relative_paths_in_a_preset_mean_the_project_root(tmp_path):
    extra = tmp_path / "paths.yaml"
    extra.write_text("data: {data_dir: data/other}\noutput_dir: runs/x\n")
    cfg = load_config(extra)
    assert cfg.data.data_dir == PROJECT_ROOT / "data" / "other"
    assert cfg.run_dir == PROJECT_ROOT / "runs" / "x" / "default"


def test_unknown_preset_and_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no preset 'nope'.*presets: .*smoke.*tiny"):
        load_config(presets=["nope"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list\.yaml must contain a mapping"):
        load_config(listed)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train: {head_epoch: 3}\n")
    with pytest.raises(ValueError, match="head_epoch"):
        load_config(typo)


def test_make_all_plans_the_whole_job_and_only_training_reads_the_budget():
    """`make all` hands `vinted train` the job's start and minutes; a user's SET still comes last and wins."""
    import shutil
    import subprocess
    import time

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    before = int(time.time())
    dry = subprocess.run(
        ["make", "-n", "all", "MAIN_JOB_MINUTES=14", "SET=train.head_epochs=5"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    commands = {line.split()[3]: line for line in dry if " -m vinted_classifier " in line}
    train = commands["train"].split("--set ")[1:]
    assert [s.strip() for s in train[:3]] == [
        "train.time_budget_minutes=14",
        "train.time_budget_scope=main_job",
        train[2].strip(),
    ]
    started = int(train[2].strip().split("=")[1])
    assert before - 1 <= started <= int(time.time()) + 1  # make's own start, read when make parsed the file
    assert train[3].strip() == "train.head_epochs=5"  # after the job's settings: the user's override wins
    for step in ("predict", "export", "release"):
        assert "time_budget" not in commands[step], step
