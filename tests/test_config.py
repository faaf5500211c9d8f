"""Run configs: YAML parsed safely, unknown keys and bad values named, overrides applied."""

from __future__ import annotations

import pytest

from cats_ds.config import CONFIG_DIR, RunConfig, load_config
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


def test_reading_a_run_config_loads_neither_hf_datasets_nor_sacrebleu():
    """The sweep and study tools read configs by the hundred: the core's config stays light."""
    import subprocess
    import sys
    code = ("import sys; from cats_ds.config import load_config; load_config('cats_ds/configs/bible8_cpu.yaml'); "
            "print(sorted({'datasets', 'sacrebleu'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=CONFIG_DIR.parents[1])
    assert result.stdout.strip().splitlines()[-1] == "[]"
