"""The package layout: the training core never imports the research and operations tools.

The core is every module directly under cats_ds/ plus cats_ds/data/ and cats_ds/cats/; the tools
live in cats_ds/tools/ and may import the core, never the reverse, so that training runs without
them and a tool can change without touching the trainer. Pure file reading (ast): no imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cats_ds"
TOOLS = "cats_ds.tools"


def core_modules() -> list[Path]:
    return sorted([*PACKAGE.glob("*.py"), *(PACKAGE / "data").glob("*.py"), *(PACKAGE / "cats").glob("*.py")])


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, the code of ``module``; relative
    imports resolved against it, ``from X import y`` counted as X.y (y may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            origin = ".".join([*base, *([node.module] if node.module else [])])
            found += [(node.lineno, f"{origin}.{alias.name}") for alias in node.names]
    return found


def tool_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    return [f"line {line}: {name}" for line, name in imported_modules(source, module, is_package)
            if name == TOOLS or name.startswith(TOOLS + ".")]


@pytest.mark.parametrize("path", core_modules(), ids=lambda path: str(path.relative_to(PACKAGE.parent)))
def test_core_does_not_import_the_tools(path):
    assert tool_imports(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py") == []


def test_the_check_finds_tool_imports():
    source = ("import cats_ds.tools.sweep\nfrom cats_ds.tools import study\nfrom ..tools.sizes import x\n"
              "from .. import tools\nfrom cats_ds import model\nfrom . import scaler\n")
    assert tool_imports(source, "cats_ds.cats.hook") == [
        "line 1: cats_ds.tools.sweep", "line 2: cats_ds.tools.study", "line 3: cats_ds.tools.sizes.x",
        "line 4: cats_ds.tools"]
    assert tool_imports("from .tools import plot\n", "cats_ds", is_package=True) == ["line 1: cats_ds.tools.plot"]


def test_the_core_is_what_the_check_reads():
    names = {_module_name(path) for path in core_modules()}
    assert {"cats_ds.train", "cats_ds.data.sampler", "cats_ds.cats.hook", "cats_ds.cats"} <= names
    assert not any(name.startswith(TOOLS) for name in names)
