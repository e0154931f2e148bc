"""A tiny run folder (embryo config + a synthetic samples/ set) and study helpers for the reader-study tests."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from synthmed.config import load_config, save_config
from synthmed.data.dataset import ImageDataset
from synthmed.data.export import save_image_set
from synthmed.data.sources import load_dataset

EMBRYO = {"dataset": "embryo", "embryo_per_class": [30, 30, 30], "image_size": 16}


def make_run(root: Path, *, samples_per_class: int = 8, name: str = "tiny", train_fingerprint: str | None = "auto",
             seed: int = 0) -> Path:
    """runs/<name>/ with config.yaml and samples/ (noise images flagged synthetic) as `synthmed run` leaves them."""
    run = Path(root) / name
    run.mkdir(parents=True)
    cfg = load_config(overrides={"name": name, "data": dict(EMBRYO)})
    save_config(cfg, run / "config.yaml")
    splits = load_dataset(cfg.data)
    rng = np.random.default_rng(seed)
    n = samples_per_class * 3
    images = rng.integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)
    meta = {"generator": "test noise"}
    if train_fingerprint == "auto":
        meta["train_fingerprint"] = splits.train.fingerprint()
    elif train_fingerprint:
        meta["train_fingerprint"] = train_fingerprint
    ds = ImageDataset(images, np.repeat(np.arange(3), samples_per_class), list(splits.class_names),
                      name="samples", synthetic=True, meta=meta)
    save_image_set(ds, run / "samples")
    return run


def token_of(link: str) -> str:
    return re.search(r"/r/([A-Za-z0-9_-]+)$", link).group(1)


def form_of(html: str) -> dict:
    """The hidden fields of the task page's answer form."""
    return {name: re.search(rf'name="{name}" value="([^"]*)"', html).group(1) for name in ("csrf", "task", "image")}


_TEMPLATES: dict = {}


def new_study(root: Path, *, readers=("r1", "r2"), per_source: int = 4, mode: str = "turing", criteria=None,
              **kwargs):
    """A fresh study folder at ``root``/study (a copy of one made once per settings, so its links are
    the template's); returns what create_study returns, pointing at the copy."""
    import atexit
    import dataclasses
    import json
    import shutil
    import tempfile

    from synthmed.study.create import create_study

    key = json.dumps([list(readers), per_source, mode, criteria, sorted(kwargs.items())], default=str)
    if key not in _TEMPLATES:
        base = Path(tempfile.mkdtemp(prefix="synthmed-study-template-"))
        atexit.register(shutil.rmtree, base, True)
        run = make_run(base / "runs")
        _TEMPLATES[key] = create_study(base / "study", real=str(run), synthetic=[str(run / "samples")],
                                       readers=list(readers), per_source=per_source, mode=mode, criteria=criteria,
                                       **kwargs)
    made = _TEMPLATES[key]
    shutil.copytree(made.folder, Path(root) / "study")
    return dataclasses.replace(made, folder=Path(root) / "study")


def truth(folder: Path) -> dict[str, int]:
    """image id -> 1 if synthetic, read from the database (what only the analysis may know)."""
    from synthmed.study import db

    with db.connect(folder) as con:
        return {r["id"]: r["synthetic"] for r in con.execute("SELECT id, synthetic FROM images")}


def answer_count(folder: Path) -> int:
    from synthmed.study import db

    with db.connect(folder) as con:
        return con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


# --------------------------------------------------------------------------- a real server in a subprocess


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int):
    """`synthmed study serve FOLDER --port PORT` in a subprocess, returned once it answers."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    import synthmed

    src = str(Path(synthmed.__file__).resolve().parents[1])  # the synthmed these tests import
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "synthmed.cli", "study", "serve", str(folder), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start within 60 s")


def stop(proc) -> None:
    """SIGKILL (no clean shutdown: what the tests rely on must survive that) and reap."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    proc.stdout.close()
