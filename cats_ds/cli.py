"""The ``cats-ds`` command: one subcommand per tool, each running that tool's own ``main(argv)``.

    cats-ds train --config cats_ds/configs/bible8_cpu.yaml train.max_steps=100
    cats-ds evaluate runs/default
    cats-ds SUBCOMMAND --help          the subcommand's own help

``cats-ds --help`` lists the subcommands with the first line of each one's docstring, read
from the source without importing it (importing torch and DeepSpeed takes seconds).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import importlib.util
import sys
from pathlib import Path

# subcommand -> "module" (its main) or "module:function": the one table to change when a module moves
SUBCOMMANDS = {
    "train": "cats_ds.train",
    "translate": "cats_ds.translate",
    "evaluate": "cats_ds.score",
    "export": "cats_ds.cli:export_main",     # cats_ds.export is a library without a main
    "study": "cats_ds.tools.study",
    "sweep": "cats_ds.tools.sweep",
    "curvature": "cats_ds.tools.curvature",
    "bench": "cats_ds.tools.bench",
    "sizes": "cats_ds.tools.sizes",
    "plot": "cats_ds.tools.plot",
    "mechanism": "cats_ds.tools.mechanism",
    "compare": "cats_ds.tools.compare",
    "overlap": "cats_ds.tools.overlap",
}


def main(argv: list[str] | None = None) -> int:
    """Runs ``cats-ds SUBCOMMAND ARGS``; returns the exit status (0, or 2 for a bad subcommand)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        near = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        print(f"cats-ds: unknown subcommand {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module, _, function = SUBCOMMANDS[name].partition(":")
    getattr(importlib.import_module(module), function or "main")(rest)
    return 0


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {summary(target)}" for name, target in SUBCOMMANDS.items()]
    return ("usage: cats-ds SUBCOMMAND [ARGS ...]\n\nMultilingual translation on DeepSpeed ZeRO with CATS.\n\n"
            "subcommands:\n" + "\n".join(lines) + "\n\n`cats-ds SUBCOMMAND --help` shows a subcommand's own options.")


def summary(target: str) -> str:
    """The first line of the docstring of a subcommand's module (or function), without importing it."""
    module, _, function = target.partition(":")
    node = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    if function:
        node = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return (ast.get_docstring(node) or "").split("\n")[0].rstrip(".:")


def export_main(argv: list[str] | None = None) -> None:
    """Export a checkpoint that transformers alone loads: model, tokenizer and decoding defaults."""
    parser = argparse.ArgumentParser(prog="cats-ds export", description=export_main.__doc__,
                                     epilog="Training exports to RUN_DIR/export by itself (train.export); this "
                                            "exports another checkpoint, e.g. an earlier one. One process.")
    parser.add_argument("target", type=Path, help="a run directory (its evaluated checkpoint) or one of its checkpoints")
    parser.add_argument("--out", type=Path, required=True, help="the export directory to write")
    parser.add_argument("--run-config", type=Path, help="the run's config.yaml, where it is not beside the target")
    args = parser.parse_args(argv)
    from cats_ds import trained   # here: importing torch and DeepSpeed is for the export alone, not for --help
    try:
        source = trained.locate(args.target, args.run_config)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if source.export:
        parser.error(f"{args.target}: already an export")
    from cats_ds.config import load_config
    from cats_ds.export import decoding_limit, save_export
    config = load_config(source.run_config)
    data = trained.load_data(config)
    model = trained.load_model(source, config, data.tokenizer)
    save_export(model, data.tokenizer, args.out, config.eval.beam, decoding_limit(config),
                list(data.test))
    print(f"exported {source.checkpoint} to {args.out}")
