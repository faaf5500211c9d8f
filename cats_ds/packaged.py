"""The DeepSpeed JSON configs shipped inside the package (``cats_ds/ds_configs/``), found by name.

``ds_config`` resolves what ``train.ds_config`` names: a path that exists from the working
directory wins (a user's own JSON of that name), else a name such as ``zero2.json`` or
``ds_configs/zero2.json`` is the packaged file, wherever cats-ds is installed. In the checkout
the top-level ``ds_configs`` is a link to the same files.
"""

from __future__ import annotations

from pathlib import Path

DS_CONFIG_DIR = Path(__file__).parent / "ds_configs"
# the folder names a run config may put before a packaged file's name
_PACKAGED_PREFIXES = (Path("."), Path("ds_configs"))


def ds_config(name: str | Path) -> Path:
    """The DeepSpeed JSON that ``train.ds_config`` names: the path itself where it exists, else the
    packaged file of that name; raises FileNotFoundError naming the key and both places looked in."""
    path = Path(name)
    if path.exists():
        return path
    packaged = DS_CONFIG_DIR / path.name
    if path.parent in _PACKAGED_PREFIXES and packaged.is_file():
        return packaged
    shipped = ", ".join(sorted(p.name for p in DS_CONFIG_DIR.glob("*.json")))
    raise FileNotFoundError(f"train.ds_config: {name} not found from {Path.cwd()}, and no packaged DeepSpeed "
                            f"config has that name (packaged: {shipped})")
