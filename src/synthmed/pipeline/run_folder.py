"""The run folder: where a run writes (``<out_dir>/<name>``), its resolved config and ``run.json``
(versions, seed, device, timings), and the one-line progress log every step prints."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import synthmed
from synthmed import distributed
from synthmed.config import RunConfig, save_config
from synthmed.files import atomic_write_json
from synthmed.runtime import resolve_device, seed_everything, set_threads


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.out_dir) / cfg.name


def log(msg: str, quiet: bool) -> None:
    if not quiet and distributed.is_main():
        print(f"[synthmed] {msg}", flush=True)


def prepare(cfg: RunConfig) -> tuple[Path, str]:
    """Create the run folder, write the resolved config, set threads/seed; return (dir, device)."""
    from synthmed.features.registry import check_extractor_name

    check_extractor_name(cfg.evaluate.extractor)  # used only after training: a typo must stop the run now
    if getattr(cfg.generator, "conditioning", "class") == "prototype":
        check_extractor_name(cfg.generator.prototypes.extractor)
    out = run_dir(cfg)
    device = resolve_device(cfg.device)
    world = distributed.init(cfg.distributed, device)  # under torchrun: this process's rank
    device = distributed.device_for(device)
    if distributed.is_main():  # several processes: rank 0 writes the run folder
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    threads = set_threads(cfg.threads)
    seed_everything(cfg.seed)
    import torch

    info_path = out / "run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info.update({
        "synthmed_version": synthmed.__version__, "torch_version": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": device, "threads": threads, "seed": cfg.seed, "preset": cfg.preset,
        "processes": world.world_size,
    })
    if distributed.is_main():
        atomic_write_json(info, info_path)
    distributed.barrier()  # the folder exists before any rank reads or writes in it
    return out, device


def update_run_info(out: Path, **values) -> None:
    if not distributed.is_main():
        return
    path = out / "run.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(info.get(k), dict):
            info[k].update(v)
        else:
            info[k] = v
    atomic_write_json(info, path)
