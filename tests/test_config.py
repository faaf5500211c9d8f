"""Run configs: YAML parsed safely, unknown keys and bad values named, overrides applied,
cross-field rules checked at load, and the command line (--config NAME, --help, --print-config)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from cats_ds.config import CONFIG_DIR, NUMERIC_RANGES, RunConfig, from_command_line, load_config
from cats_ds.configio import ConfigError, describe_keys
from corpus_fixture import write_corpus

HUB = ["data.source=hub", "data.hub_dataset=some/corpus", "data.hub_directions=[fr-en, de-en]"]


def test_shipped_configs_load():
    for path in CONFIG_DIR.glob("*.yaml"):
        assert isinstance(load_config(path), RunConfig)


def test_overrides_are_typed_and_applied():
    config = load_config(CONFIG_DIR / "bible8_cpu.yaml",
                         ["train.max_steps=7", "cats.enabled=false", "sampling.temperature=1", *HUB,
                          "data.task_map={fr-en: x, de-en: x}"])
    assert config.train.max_steps == 7 and config.cats.enabled is False
    assert config.sampling.temperature == 1.0 and config.data.task_map == {"fr-en": "x", "de-en": "x"}
    assert config.data.hub_directions == ["fr-en", "de-en"] and config.model.preset == "cpu"   # from the file


@pytest.mark.parametrize("override, key, value", [
    ("optim.lr=3e-4", "lr", 3e-4), ("optim.eps=1e-9", "eps", 1e-9), ("optim.lr=1E-3", "lr", 1e-3),
    ("optim.weight_decay=1e-2", "weight_decay", 0.01), ("optim.label_smoothing=0", "label_smoothing", 0.0),
])
def test_numbers_are_read_as_a_person_writes_them(override, key, value):
    """YAML 1.1 reads 3e-4 as a string; a float key takes it as the number it is."""
    got = getattr(load_config(None, [override]).optim, key)
    assert type(got) is float and got == pytest.approx(value)
    assert load_config(None, ["train.max_minutes=1e3"]).train.max_minutes == 1000.0


def test_config_files_read_numbers_as_a_person_writes_them(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 3e-4\n  eps: 1e-9\n")
    config = load_config(path)
    assert (config.optim.lr, config.optim.eps) == (3e-4, 1e-9)


def test_overrides_take_booleans_null_lists_and_replace_file_values(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  low_resource: [fr-en]\ntrain:\n  max_steps: 5\n")
    config = load_config(path, [*HUB, "eval.bleu_during_training=true", "data.low_resource=[de-en]",
                                "train.max_steps=9", "optim.betas=[0.8, 0.9]"])
    assert config.eval.bleu_during_training is True and config.data.low_resource == ["de-en"]
    assert config.train.max_steps == 9 and config.optim.betas == [0.8, 0.9]
    with pytest.raises(ConfigError, match=r"data\.low_resource: expected a list, got None"):
        load_config(None, ["data.low_resource=null"])


@pytest.mark.parametrize("override, named", [
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("train.max_steps=1.5", "train.max_steps: expected an integer, got 1.5"),
    ("cats.enabled=maybe", "cats.enabled: expected true/false, got 'maybe'"),
    ("optim.lr", "override 'optim.lr': expected key.sub=value"),
])
def test_bad_values_name_the_key_and_the_value(override, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(None, [override])


@pytest.mark.parametrize("override, suggestion", [
    ("optim.lrr=1", "optim.lr"), ("optm.lr=1", "optim"), ("train.max_step=3", "train.max_steps"),
    ("cats.alpha_mn=0.1", "cats.alpha_min"),
])
def test_an_unknown_override_key_suggests_the_nearest_valid_one(override, suggestion):
    with pytest.raises(ConfigError, match=re.escape(f"override {override!r}: unknown key(s) ") + ".*"
                       + re.escape(f"(did you mean {suggestion}?)")):
        load_config(None, [override])


def test_an_unknown_key_with_nothing_near_lists_the_known_ones():
    known = r"unknown key\(s\) optim\.zzzzzz; known in optim: betas, clip_norm, eps"
    with pytest.raises(ConfigError, match=known) as err:
        load_config(None, ["optim.zzzzzz=1"])
    assert "did you mean" not in str(err.value)


def test_an_unknown_key_in_a_file_names_the_file_and_suggests(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  lrr: 0.001\nsampling:\n  temprature: 2\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown key\(s\) optim\.lrr \(did you mean optim\.lr\?\)"):
        load_config(path)
    path.write_text("optimizer:\n  lr: 0.001\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown key\(s\) optimizer \(did you mean optim\?\)"):
        load_config(path)


def test_an_override_below_a_value_or_into_a_mapping():
    with pytest.raises(ConfigError, match=r"'optim\.lr\.x=1': optim\.lr is a value"):
        load_config(None, ["optim.lr.x=1"])
    config = load_config(None, [*HUB, "data.task_map.fr-en=a", "data.task_map.de-en=b"])   # a mapping's own keys
    assert config.data.task_map == {"fr-en": "a", "de-en": "b"}


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
    "sampling.temperature=.inf", "sampling.temperature=.nan", "sampling.temperature=0.001",
    "optim.betas=[0.9, 1.0]", "model.dropout=1.0",
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


# ---------------------------------------------------------------- cross-field checks at load


@pytest.mark.parametrize("metric", ["dev_loss_low", "bleu_low", "chrf_low"])
def test_a_low_resource_metric_without_low_resource_tasks_is_refused(metric):
    with pytest.raises(ConfigError, match=rf"eval\.best_metric={metric} .*data\.low_resource is empty"):
        load_config(None, [*HUB, f"eval.best_metric={metric}"])
    assert load_config(None, [*HUB, f"eval.best_metric={metric}", "data.low_resource=[de-en]"])
    assert load_config(None, [f"eval.best_metric={metric}"])   # the Bible preset names its low-resource languages


def test_a_high_resource_metric_when_every_task_is_low_resource_is_refused():
    with pytest.raises(ConfigError, match=r"eval\.best_metric=bleu_high .*every task.*data\.low_resource"):
        load_config(None, [*HUB, "eval.best_metric=bleu_high", "data.low_resource=[fr-en, de-en]"])


def test_alpha_min_times_the_number_of_tasks_above_one_is_refused():
    """bible8 has 8 tasks: alpha_min may be at most 1/8."""
    with pytest.raises(ConfigError, match=r"cats\.alpha_min=0\.2 times the 8 tasks .*data\.tasks=direction.* 1\.6 > 1"):
        load_config(None, ["cats.alpha_min=0.2"])
    assert load_config(None, ["cats.alpha_min=0.125"]).cats.alpha_min == 0.125
    assert load_config(None, ["cats.alpha_min=0.2", "cats.enabled=false"])       # no TaskScaler, no floor
    assert load_config(None, ["cats.alpha_min=0.5", "data.tasks=target"])        # one task: *-en
    with pytest.raises(ConfigError, match=r"cats\.alpha_min=0\.6 times the 2 tasks .*data\.source=hub"):
        load_config(None, [*HUB, "cats.alpha_min=0.6"])


def test_alpha_min_is_checked_against_the_tasks_of_a_local_corpus(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")      # fr-en, de-en, es-en
    local = ["data.source=local", f"data.local_dir={corpus}"]
    with pytest.raises(ConfigError, match=r"cats\.alpha_min=0\.4 times the 3 tasks .*data\.source=local"):
        load_config(None, [*local, "cats.alpha_min=0.4"])
    assert load_config(None, [*local, "cats.alpha_min=0.3"])
    assert load_config(None, ["data.source=local", f"data.local_dir={tmp_path / 'missing'}", "cats.alpha_min=0.4"])


def test_a_local_corpus_names_its_low_resource_languages_in_its_manifest(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    local = ["data.source=local", f"data.local_dir={corpus}", "eval.best_metric=dev_loss_low"]
    with pytest.raises(ConfigError, match=r"eval\.best_metric=dev_loss_low .*data\.low_resource is empty"):
        load_config(None, local)
    (corpus / "manifest.json").write_text('{"low_resource": ["es"]}')
    assert load_config(None, local).eval.best_metric == "dev_loss_low"


def test_a_task_map_that_does_not_fit_the_directions_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"data: grouping maps no task for directions de-en"):
        load_config(None, [*HUB, "data.task_map={fr-en: x}"])


def test_a_micro_budget_below_one_longest_pair_is_refused():
    with pytest.raises(ConfigError, match=r"sampling\.max_tokens_per_micro=100 .*2 \* data\.max_len = 128"):
        load_config(None, ["sampling.max_tokens_per_micro=100", "data.max_len=64"])
    assert load_config(None, ["sampling.max_tokens_per_micro=128", "data.max_len=64"])


# ---------------------------------------------------------------- the command line


def test_a_config_name_resolves_to_the_shipped_file():
    config = from_command_line(["--config", "bible8_cpu", "train.max_steps=3", "--local_rank=0"], "test")
    assert config == load_config(CONFIG_DIR / "bible8_cpu.yaml", ["train.max_steps=3"])


def test_config_errors_on_the_command_line_exit_2_with_the_message(tmp_path, capsys):
    for argv, message in [
        (["--config", "bible8_cpx"], r"--config bible8_cpx: no shipped config .*did you mean bible8_cpu\?"),
        (["--config", str(tmp_path / "nowhere.yaml")], r"config file not found: .*nowhere\.yaml"),
        (["optim.lrr=3e-4"], r"override 'optim\.lrr=3e-4': unknown key\(s\) optim\.lrr \(did you mean optim\.lr\?\)"),
    ]:
        with pytest.raises(SystemExit) as stop:
            from_command_line(argv, "test")
        assert stop.value.code == 2
        assert re.search(r"test: error: .*" + message, capsys.readouterr().err)


def test_print_config_prints_the_resolved_config_and_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        from_command_line(["--config", "bible8_cpu", "--print-config", "optim.lr=3e-4"], "test")
    assert stop.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = dataclasses.asdict(load_config(CONFIG_DIR / "bible8_cpu.yaml", ["optim.lr=3e-4"]))
    assert printed == expected and printed["optim"]["lr"] == 3e-4


def test_help_lists_every_key_with_its_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as stop:
        from_command_line(["--help"], "test")
    assert stop.value.code == 0
    text = capsys.readouterr().out.partition("keys (key=default, meaning):")[2]
    for key, _, meaning in describe_keys(RunConfig):
        line = next((line for line in text.splitlines() if line.strip().startswith(f"{key}=")), None)
        assert line is not None and line.rstrip().endswith(meaning), key
    assert re.search(r"^  optim\.lr=0\.002 +peak learning rate$", text, re.M)
    assert re.search(r"^  optim\.betas=\[0\.9, 0\.98\] +AdamW's \(beta1, beta2\)$", text, re.M)


def test_every_key_has_a_one_line_meaning_beside_its_field():
    rows = describe_keys(RunConfig)
    assert len(rows) == len({key for key, _, _ in rows}) > 70
    assert [key for key, _, meaning in rows if not meaning] == []
    meanings = {key: meaning for key, _, meaning in rows}
    assert meanings["sampling.sort_block"] == ("each rank's shard is length-sorted in blocks of this many "
                                               "(1: no sorting)")          # the first sentence of the comment above
    assert meanings["train.max_minutes"] == "wall-clock budget for the training loop; 0: none"   # the one beside


def test_the_reference_tables_name_exactly_the_config_keys():
    """docs/configuration.md's tables are written for reading, --help is generated: they name the same keys."""
    reference = (CONFIG_DIR.parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    configuration = reference.split("\n## Run config keys\n", 1)[1].split("\n## ", 1)[0]
    named = {f"{section}.{key}" for section, keys in re.findall(r"^\| (\w+) \| ([^|]*) \|", configuration, re.M)
             for key in re.findall(r"`(\w+)`", keys)}
    cats_knobs = reference.split("\n## CATS knobs", 1)[1].split("\n\n", 2)[1]
    named |= {f"cats.{key}" for key in re.findall(r"^\| `(\w+)` \|", cats_knobs, re.M)}
    assert named == {key for key, _, _ in describe_keys(RunConfig)}
