"""Every reference to a repository document points at a file that exists in the repository.

Scanned: every text file under cats_ds/, tests/ and launch/, README.md and the hand-written
docs/*.md. Checked:

- paths under docs/ (in the code, tests, launch scripts and README);
- ``.md`` names that refer to the repository: a path whose first part is a repository
  directory (docs/, cats_ds/, ...) or that goes through shared/ or notes/, an upper-case
  name such as README.md, or an absolute path (never part of the repository). Lower-case
  names under other directories (report.md, DIR/results.md) are files the tools write and
  are not checked;
- Markdown links in README.md and docs/*.md, relative to the linking file, with their
  #anchors checked against the target's headings.

Pure file reading: no imports of the package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_TREES = ("cats_ds", "tests", "launch")
REPOSITORY_DIRS = {"docs", "cats_ds", "tests", "launch", "ds_configs", "shared", "notes"}

_START = r"(?<![\w.\-/~])"
MD_REFERENCE = re.compile(_START + r"([~/]?(?:[\w.\-]+/)*[\w.\-]+\.md)(?![\w\-])")
DOCS_PATH = re.compile(_START + r"(docs/[\w.\-/]*)")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
UPPER_CASE_NAME = re.compile(r"[A-Z][A-Z0-9_\-]*\.md")


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for tree in SCANNED_TREES:
        files += sorted(path for path in (ROOT / tree).rglob("*")
                        if path.is_file() and "__pycache__" not in path.parts)
    # binary files (plots, wheels) hold no references
    return [path for path in files if path != Path(__file__).resolve() and _read_text(path) is not None]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None   # binary


def _exists(reference: str, where: Path) -> bool:
    return (ROOT / reference).exists() or (where.parent / reference).exists()


def _is_repository_md(reference: str) -> bool:
    if reference.startswith(("/", "~")):
        return True
    parts = reference.split("/")
    if len(parts) == 1:
        return bool(UPPER_CASE_NAME.fullmatch(reference))
    return parts[0] in REPOSITORY_DIRS or "shared" in parts or "notes" in parts


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def _link_problem(target: str, where: Path) -> str | None:
    if re.match(r"[a-z]+:", target):    # http:, https:, mailto:
        return None
    path, _, anchor = target.partition("#")
    resolved = (where.parent / path).resolve() if path else where
    if not resolved.exists():
        return f"link to {target}: no such file"
    if anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved.read_text(encoding="utf-8")):
        return f"link to {target}: no heading with that anchor"
    return None


def missing_references(text: str, where: Path) -> list[str]:
    """What ``text`` (the content of ``where``) references that the repository lacks."""
    problems = []
    is_doc = where.suffix == ".md" and where.parent.name == "docs"
    for line_number, line in enumerate(text.splitlines(), start=1):
        found = [m.group(1) for m in MD_REFERENCE.finditer(line) if _is_repository_md(m.group(1))]
        if not is_doc:   # docs may name output directories that a tool creates later
            found += [m.group(1).rstrip("./,") for m in DOCS_PATH.finditer(line)]
        problems += [f"{line_number}: {ref}" for ref in dict.fromkeys(found)
                     if ref.startswith(("/", "~")) or not _exists(ref, where)]
        if where.suffix == ".md":
            problems += [f"{line_number}: {problem}" for m in MARKDOWN_LINK.finditer(line)
                         if (problem := _link_problem(m.group(1), where))]
    return problems


@pytest.mark.parametrize("path", scanned_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_references_point_at_files_in_the_repository(path):
    assert missing_references(_read_text(path), path) == []


def test_the_check_finds_bad_references():
    where = ROOT / "cats_ds" / "example.py"
    text = ("see " + "DESIGN" + ".md and shared/" + "notes/zero.md, /work/" + "shared/x" + ".md, docs/" + "nope.md\n"
            "fine: README.md, docs/design.md, DIR/report.md, results.md\n")
    assert missing_references(text, where) == [
        "1: " + "DESIGN" + ".md", "1: shared/" + "notes/zero.md", "1: /work/" + "shared/x" + ".md", "1: docs/" + "nope.md"]
    readme = ROOT / "README.md"
    assert missing_references("[a](docs/design.md#1-quantities-of-one-optimizer-step) [b](#nowhere)", readme) == [
        "1: link to #nowhere: no heading with that anchor"]
