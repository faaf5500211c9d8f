"""The installable tool: the `cats-ds` command and its subcommands, the declared dependencies,
the packaged DeepSpeed configs and what a built wheel carries."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from cats_ds import cli, packaged
from conftest import CATS_DS, REPO, package_source


def test_help_lists_every_subcommand_with_one_line(capsys):
    assert cli.main(["--help"]) == 0
    listed = {line.split()[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()
              if line.startswith("  ")}
    assert set(listed) == set(cli.SUBCOMMANDS) == {"train", "translate", "evaluate", "export", "study", "sweep",
                                                    "curvature", "bench", "sizes", "plot", "mechanism", "compare", "overlap"}
    assert listed["evaluate"].startswith("Score a run, a checkpoint or an export")


def test_no_subcommand_or_an_unknown_one_is_an_error_that_suggests_the_nearest(capsys):
    assert cli.main([]) == 2
    assert cli.main(["evalute", "runs/x"]) == 2
    assert "unknown subcommand 'evalute' (did you mean evaluate?)" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_each_subcommand_shows_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_the_console_script_runs_a_subcommand():
    result = subprocess.run([str(CATS_DS), "sizes", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr


def test_declared_dependencies_are_requirements_txt():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = {line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    assert declared == required
    assert project["scripts"] == {"cats-ds": "cats_ds.cli:main"}


def test_a_ds_config_path_that_exists_wins_else_the_packaged_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert packaged.ds_config("ds_configs/zero2.json") == packaged.DS_CONFIG_DIR / "zero2.json"
    assert packaged.ds_config("zero3.json") == packaged.DS_CONFIG_DIR / "zero3.json"
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "zero2.json").write_text("{}")
    assert packaged.ds_config("ds_configs/zero2.json").resolve() == tmp_path / "ds_configs" / "zero2.json"


@pytest.mark.parametrize("name", ["zero9.json", "elsewhere/zero2.json"])
def test_a_ds_config_found_nowhere_is_an_error_naming_the_key(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"train.ds_config: {name} not found .*packaged: .*zero2.json"):
        packaged.ds_config(name)


def test_the_wheel_carries_the_configs_specs_and_deepspeed_configs(tmp_path):
    source = package_source(tmp_path / "source")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                             str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("cats_ds-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [path.relative_to(REPO).as_posix() for folder in ("configs", "ds_configs")
               for path in (REPO / "cats_ds" / folder).rglob("*") if path.suffix in (".yaml", ".json")]
    assert {"cats_ds/configs/bible8_cpu.yaml", "cats_ds/ds_configs/zero2.json"} <= set(shipped)
    assert any("/studies/" in name for name in shipped) and any("/sweeps/" in name for name in shipped)
    assert set(shipped) <= names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "cats-ds = cats_ds.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
