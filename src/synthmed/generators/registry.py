"""The one registry of generator kinds: build and load any generator by the ``kind`` its config or
its saved folder names.

It imports the implementations (they never import it), so there is no import cycle, and callers
(pipeline, selection, downstream, CLI) name a kind, never a class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from synthmed.config import GENERATOR_CONFIGS
from synthmed.generators.base import Generator, GeneratorError
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.generators.progan import ProGANGenerator
from synthmed.generators.r3gan import R3GANGenerator

GENERATORS: dict[str, type[Generator]] = {}


def register_generator(cls: type[Generator], *, overwrite: bool = False) -> type[Generator]:
    """Register a Generator subclass under its ``kind``; its config class must be in
    ``synthmed.config.GENERATOR_CONFIGS`` under the same kind (configs are validated before any
    generator module is imported)."""
    if cls.kind in GENERATORS and not overwrite:
        raise GeneratorError(f"generator kind '{cls.kind}' is registered already")
    if cls.kind not in GENERATOR_CONFIGS:
        raise GeneratorError(f"generator kind '{cls.kind}' has no config class in synthmed.config.GENERATOR_CONFIGS")
    GENERATORS[cls.kind] = cls
    return cls


def generator_kinds() -> list[str]:
    return sorted(GENERATORS)


def generator_class(kind: str) -> type[Generator]:
    if kind not in GENERATORS:
        raise GeneratorError(f"unknown generator kind '{kind}'; available: {', '.join(generator_kinds())}")
    return GENERATORS[kind]


def build_generator(cfg, *, image_size: int, channels: int, class_names: list[str], device: str = "cpu",
                    seed: int = 0) -> Generator:
    """A new, untrained generator of the kind ``cfg.kind`` names."""
    cls = generator_class(cfg.kind)
    if not isinstance(cfg, GENERATOR_CONFIGS[cfg.kind]):
        raise GeneratorError(f"generator kind '{cfg.kind}' needs a {GENERATOR_CONFIGS[cfg.kind].__name__}, "
                             f"got {type(cfg).__name__}")
    return cls(cfg, image_size=image_size, channels=channels, class_names=class_names, device=device, seed=seed)


def load_generator(directory: str | os.PathLike, device: str | None = None) -> Generator:
    """Open any saved generator by the ``kind`` recorded in its ``generator.json``."""
    d = Path(directory)
    meta = d / "generator.json"
    if not meta.is_file():
        raise GeneratorError(f"{d} holds no saved generator (no generator.json); train one with `synthmed train`")
    kind = json.loads(meta.read_text()).get("kind", "diffusion")
    return generator_class(kind).load(d, device=device)


register_generator(DiffusionGenerator)
register_generator(R3GANGenerator)
register_generator(ProGANGenerator)

__all__ = ["register_generator", "generator_kinds", "generator_class", "build_generator", "load_generator",
           "GENERATORS"]
