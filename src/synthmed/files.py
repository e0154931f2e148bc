"""Files written atomically (a killed run never leaves half a file) and JSON that takes numpy values.

Shared by every stage (generators, classifiers, downstream, pipeline, CLI); it imports nothing of
synthmed, so any module may use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/synthmed`` (``~/.cache/synthmed``): where networks trained once per split are
    kept (the judge under ``domain/``, latent autoencoders under ``autoencoder/``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "synthmed"


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename: a killed run never
    leaves a half-written checkpoint behind."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(obj, path: str | os.PathLike) -> None:
    atomic_write_text(json.dumps(obj, indent=2, default=json_default) + "\n", path)


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
