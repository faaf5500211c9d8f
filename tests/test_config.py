"""Run configs: YAML parsed safely, unknown keys and bad values named, overrides applied."""

from __future__ import annotations

import re

import pytest

from cats_ds.config import CONFIG_DIR, NUMERIC_RANGES, RunConfig, load_config
from cats_ds.configio import ConfigError


def test_shipped_configs_load():
    for path in CONFIG_DIR.glob("*.yaml"):
        assert isinstance(load_config(path), RunConfig)


def test_overrides_are_typed_and_applied():
    config = load_config(CONFIG_DIR / "bible8_cpu.yaml",
                         ["train.max_steps=7", "cats.enabled=false", "sampling.temperature=1", "data.task_map={a-b: x}"])
    assert config.train.max_steps == 7 and config.cats.enabled is False
    assert config.sampling.temperature == 1.0 and config.data.task_map == {"a-b": "x"}


@pytest.mark.parametrize("override, named", [
    ("train.max_stepz=3", "train.max_stepz"),
    ("sampling.temperature=0", "sampling.temperature"),
    ("sampling.temperature=-2", "sampling.temperature"),
    ("train.max_steps=ten", "train.max_steps"),
    ("cats.objective=magic", "objective"),
    ("model.preset=huge", "model.preset"),
    ("eval.best_metric=accuracy", "eval.best_metric"),
    ("data.source=local", "data.local_dir"),
    ("cats.enabled=1", "cats.enabled"),
])
def test_bad_values_are_refused_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_is_parsed_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(path)


def test_missing_and_non_mapping_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(tmp_path / "nowhere.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml.*mapping"):
        load_config(listing)


def _numeric_keys(cls=RunConfig, prefix: str = "") -> dict[str, type]:
    """Every int or float key of the run config (a list of numbers counts as one key), by walking the schema."""
    import dataclasses
    import typing
    keys = {}
    for name, hint in typing.get_type_hints(cls).items():
        element = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
        if dataclasses.is_dataclass(hint):
            keys.update(_numeric_keys(hint, f"{prefix}{name}."))
        elif element in (int, float):
            keys[f"{prefix}{name}"] = element
    return keys


def test_every_numeric_key_has_a_declared_range():
    assert set(NUMERIC_RANGES) == set(_numeric_keys())


@pytest.mark.parametrize("key", [k for k, kind in _numeric_keys().items() if kind is float])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused_for_every_float_key(key, value):
    override = f"{key}=[0.9, {value}]" if key == "optim.betas" else f"{key}={value}"
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


@pytest.mark.parametrize("key", sorted(_numeric_keys()))
def test_every_numeric_key_refuses_a_value_below_its_range(key):
    valid = NUMERIC_RANGES[key]
    below = valid.low if valid.low_open else valid.low - (1 if _numeric_keys()[key] is int else 1e-6)
    override = f"{key}=[0.9, {below}]" if key == "optim.betas" else f"{key}={below}"
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


@pytest.mark.parametrize("override", [
    "optim.lr=.inf", "optim.lr=.nan", "optim.lr=-0.001", "optim.eps=.inf", "optim.eps=-0.001", "optim.eps=.nan",
    "optim.weight_decay=-0.1", "optim.weight_decay=.inf", "optim.clip_norm=.inf", "optim.clip_norm=-1",
    "optim.clip_norm=.nan", "train.max_minutes=.inf", "train.max_minutes=.nan", "train.max_minutes=-5",
    "sampling.temperature=.inf", "sampling.temperature=.nan", "optim.betas=[0.9, 1.0]", "model.dropout=1.0",
    "train.seed=-1", "data.seed=4294967296", "cats.ema_decay=1.0",
])
def test_meaningless_numbers_are_refused_at_start_naming_the_key(override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=re.escape(key) + r"(\[\d\])?:? must be"):
        load_config(None, [override])


def test_range_boundaries_are_accepted():
    config = load_config(None, ["optim.weight_decay=0", "optim.clip_norm=0", "train.max_minutes=0",
                                "optim.betas=[0, 0.999]", "train.seed=0", "data.seed=4294967295"])
    assert config.optim.clip_norm == 0 and config.data.seed == 2 ** 32 - 1


def test_reading_a_run_config_loads_neither_hf_datasets_nor_sacrebleu():
    """The sweep and study tools read configs by the hundred: the core's config stays light."""
    import subprocess
    import sys
    code = ("import sys; from cats_ds.config import load_config; load_config('cats_ds/configs/bible8_cpu.yaml'); "
            "print(sorted({'datasets', 'sacrebleu'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=CONFIG_DIR.parents[1])
    assert result.stdout.strip().splitlines()[-1] == "[]"
