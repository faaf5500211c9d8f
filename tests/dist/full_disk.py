"""Fills the file system of DIR, then saves a 1-process checkpoint into DIR/checkpoints.

    python tests/dist/full_disk.py DIR     (run in a mount namespace with a small tmpfs at DIR)
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import deepspeed
import torch

from cats_ds import checkpoint, distributed


def fill(directory: Path) -> None:
    """Writes one file until the file system refuses more."""
    try:
        with open(directory / "filler", "wb", buffering=0) as handle:
            while True:
                handle.write(bytes(4096))
    except OSError as err:
        assert err.errno == errno.ENOSPC, err


def main() -> None:
    directory = Path(sys.argv[1])
    distributed.init()
    model = torch.nn.Linear(64, 64)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": 2}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config)
    (directory / "checkpoints").mkdir()
    fill(directory)
    checkpoint.save(engine, directory / "checkpoints", 3, {"step": 3, "per_rank": {}})


if __name__ == "__main__":
    main()
