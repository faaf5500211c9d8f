"""Run metrics: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard when installed."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


LOST_NAME = "metrics.lost.jsonl"


class MetricsWriter:
    """Appends records on rank 0; other ranks get a writer that does nothing.

    A run starts (or resumes) at ``start_step``; records of later steps already in the file were
    written by an attempt that crashed after its last checkpoint and will be written again, so
    they are moved to ``metrics.lost.jsonl`` first: the file then holds each step once."""

    def __init__(self, run_dir: Path, enabled: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        if enabled:
            _rewind(run_dir / "metrics.jsonl", run_dir / LOST_NAME, start_step)
        self.file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if enabled else None
        self.tensorboard = _tensorboard(run_dir) if enabled else None

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, **values}
        self.file.write(json.dumps(record, default=_jsonable) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in _scalars(kind, values):
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _rewind(path: Path, lost_path: Path, start_step: int) -> None:
    """Moves the records of steps after ``start_step`` from ``path`` to the end of ``lost_path``
    (each marked with the step it was rewound to), and a last line a crash cut short (kept as
    ``{"kind": "torn", "text": ...}``); the rewrite is atomic."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records, torn = _parse_records(path, lines)
    lost = [record for record in records if record["step"] > start_step] + torn
    if not lost:
        return
    with open(lost_path, "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps({**record, "rewound_to": start_step}) + "\n" for record in lost)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps(record) + "\n" for record in records if record["step"] <= start_step),
                         encoding="utf-8")
    os.replace(temporary, path)


def _parse_records(path: Path, lines: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records of ``lines``, and the last line as a torn record where it is not valid JSON."""
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"{path}: record {number} is not JSON ({err})") from None
            return records, [{"kind": "torn", "text": line}]
    return records, []


def read_metrics(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _scalars(prefix: str, values: dict[str, Any]):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _scalars(f"{prefix}/{key}", value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield f"{prefix}/{key}", value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def run_file(run_dir: Path, relative: str) -> Path:
    """``run_dir / relative``, refused when it would land outside the run directory (a name taken
    from data or a config must never make the trainer write elsewhere)."""
    root = Path(run_dir).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{relative!r} resolves to {path}, outside the run directory {root}")
    return path
