"""Typed run configuration: plain dataclasses, loaded from YAML, with presets named after the papers.

One place for defaults. A run's resolved config is written next to its outputs
(``runs/<name>/config.yaml``) so every figure can be traced to the settings that made it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """Unknown key, wrong type or unknown preset in a config."""


@dataclass
class DataConfig:
    #: "embryo" (embedded procedural default), "folder:PATH", "csv:PATH", "medmnist:FLAG"
    dataset: str = "embryo"
    #: root folder for MedMNIST files (``<root>/<flag>.npz``); default ~/.medmnist
    data_root: str | None = None
    #: every image is brought to image_size x image_size (square)
    image_size: int = 32
    #: 1 (grey) or 3 (RGB); None keeps what the data has (mixed channels are an error then)
    channels: int | None = None
    #: what to do with images of another size: "resize" (bilinear, after centre crop to square) or "error"
    resize_policy: str = "resize"
    #: "auto": the source's official split when it has one (MedMNIST), else a new one;
    #: "official": require the source's split; "random": always make a new stratified split
    #: (patient-level when patient ids exist) with the fractions below
    split: str = "auto"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    #: keep only this many training images per class (small-data regime); None = all
    train_per_class: int | None = None
    #: make one class the minority: keep ``imbalance_ratio`` of its training images
    minority_class: str | None = None
    imbalance_ratio: float = 1.0
    #: region of interest: "none", "auto" (one round object per image), or "boxes:PATH" (CSV or VOC folder)
    roi: str = "none"
    #: training images pixel-identical to a val/test image: "drop" (from train, reported), "error", "keep"
    cross_split_duplicates: str = "drop"
    #: optional explicit class list (order = label index); labels outside it are an error
    classes: list[str] | None = None
    #: size of the embedded default dataset (images per class before splitting; 3-cell stage is rarer)
    embryo_per_class: list[int] = field(default_factory=lambda: [400, 140, 400])


@dataclass
class AutoencoderConfig:
    """Small KL autoencoder (diffusers AutoencoderKL) for latent diffusion."""

    #: local folder of a pretrained AutoencoderKL (diffusers format); None trains one on the training split
    pretrained_path: str | None = None
    latent_channels: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    kl_weight: float = 1e-6
    lr: float = 1e-3
    batch_size: int = 64
    train_steps: int = 1500


@dataclass
class DiffusionConfig:
    """Class-conditional diffusion on diffusers' UNet2DModel (pixel or latent space)."""

    space: str = "pixel"  # "pixel" or "latent"
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    #: attention at the lowest resolution only (costly on CPU); False = pure convolution
    attention: bool = False
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    schedule: str = "cosine"  # "linear" or "cosine"
    prediction_type: str = "epsilon"  # "epsilon" or "v_prediction"
    #: probability of replacing the label with the null class during training (classifier-free guidance)
    cond_dropout: float = 0.1
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    batch_size: int = 64
    train_steps: int = 2000
    ema_decay: float = 0.995
    hflip: float = 0.5
    vflip: float = 0.5
    #: "dpmsolver++", "ddim" or "ddpm"
    sampler: str = "dpmsolver++"
    sample_steps: int = 20
    guidance: float = 2.0
    #: bf16 autocast on CUDA devices that support it; always float32 on CPU
    mixed_precision: bool = True
    checkpoint_every: int = 500
    log_every: int = 25
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)


@dataclass
class ClassifierConfig:
    """Classifier used for the judge (conditional accuracy) and the downstream check."""

    arch: str = "smallcnn"  # "smallcnn" or "resnet18"
    #: smallcnn only: channels of its conv blocks ([16, 32, 64] is ~4x cheaper than the default)
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    #: local torchvision ResNet-18 weights file (ImageNet); None trains from scratch
    weights_path: str | None = None
    optimizer: str = "adam"  # "adam" or "sgd"
    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 30
    #: stop when validation loss has not improved for this many epochs (evaluation rounds with ``steps``)
    patience: int = 6
    #: train for this many optimizer steps whatever the training-set size (then ``epochs`` is unused):
    #: every protocol gets the same budget (real+synthetic must not win by taking more steps), and a
    #: 400-image set is not stopped after a few dozen steps. None: ``epochs`` passes over the data
    steps: int | None = None
    #: with ``steps``: validate (and count patience) every this many steps
    eval_every: int = 100
    weight_decay: float = 1e-4
    #: multiply the lr by ``lr_gamma`` at these fractions of ``epochs`` (MedMNIST: [0.5, 0.75]); empty = constant
    lr_milestones: list[float] = field(default_factory=list)
    lr_gamma: float = 0.1
    #: what ``augment=True`` applies: any of "flip" (horizontal + vertical), "rot90", "jitter"
    augmentations: list[str] = field(default_factory=lambda: ["flip", "rot90"])
    #: strength of "jitter": brightness and contrast factors drawn from [1 - jitter, 1 + jitter]
    jitter: float = 0.2


@dataclass
class EvaluateConfig:
    #: classifier trained on the real training split: scores conditional accuracy and, as the
    #: "domain" feature extractor, provides the features of every distribution metric
    judge: ClassifierConfig = field(default_factory=ClassifierConfig)
    #: "domain" (the judge's penultimate features), "inception" / "inception:WEIGHTS.pth"
    #: (standard FID Inception-v3; needs its weights file), or "torchscript:MODEL.pt"
    extractor: str = "domain"
    #: real split the synthetic images are compared with ("test" keeps the extractor's own
    #: training images out of the comparison)
    real_split: str = "test"
    metrics: list[str] = field(default_factory=lambda: ["fid", "kid", "precision", "recall", "f1", "density",
                                                        "coverage", "ssim"])
    k: int = 3
    n_boot: int = 100
    #: LPIPS needs ImageNet backbone weights (torch hub cache or lpips_weights_dir)
    lpips: bool = False
    lpips_weights_dir: str | None = None
    #: nearest-training-image audit of every synthetic image
    memorisation: bool = True


@dataclass
class SelectConfig:
    """Realism-score filtering (Kynkaenniemi et al. 2019; pcam-ddpm eq. 11) of synthetic images."""

    mode: str = "none"  # "none", "global" or "class"
    threshold: float = 1.0
    k: int = 3
    #: at most budget_factor x the requested images per class are generated while filtering
    budget_factor: float = 10.0


@dataclass
class DownstreamConfig:
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    #: 5 by default: with 3 the sign of a small paired difference flipped between reruns of the demo
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    #: synthetic images added per real training image in the "real + synthetic" arm
    synthetic_ratio: float = 1.0
    #: augmentation set of the ``traditional`` protocol (names as in classifier.augmentations)
    augmentations: list[str] = field(default_factory=lambda: ["flip", "rot90", "jitter"])
    # ---- `synthmed downstream` experiment (the quick check in `synthmed run` uses the keys above)
    #: baseline, traditional, mix, transfer, synthetic-only, balance, ratio-sweep (or ratio-R:S)
    protocols: list[str] = field(default_factory=lambda: ["baseline", "traditional", "mix", "transfer",
                                                          "synthetic-only", "balance"])
    #: realism filtering of the synthetic pool per cell: none, global, class
    filters: list[str] = field(default_factory=lambda: ["none"])
    #: 0: repeat over `seeds` on the whole training split; k > 0: k non-overlapping subsets of it
    subsets: int = 0
    subset_per_class: int | None = None
    subset_fraction: float | None = None
    #: train one generator on the whole training split and reuse it for every repeat (faster;
    #: the output warns that repeats then share a generator)
    reuse_generator: bool = False
    #: synthetic pool per class = oversample x what the most demanding protocol needs
    oversample: float = 1.0


@dataclass
class RunConfig:
    name: str = "demo"
    out_dir: str = "runs"
    seed: int = 0
    #: CPU threads for torch; 0 = all cores
    threads: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    #: synthetic images per class to generate (None: as many as the real training split has)
    samples_per_class: int | None = 200
    data: DataConfig = field(default_factory=DataConfig)
    generator: DiffusionConfig = field(default_factory=DiffusionConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    preset: str | None = None


# --------------------------------------------------------------------------- (de)serialisation


def to_dict(cfg) -> dict:
    return asdict(cfg)


def _build(cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, val in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key '{where + '.' if where else ''}{key}'; known keys: {', '.join(sorted(known))}"
            )
        typ = hints[key]
        if is_dataclass(typ):
            kwargs[key] = _build(typ, val or {}, f"{where}.{key}" if where else key)
        else:
            kwargs[key] = val
    return cls(**kwargs)


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def from_dict(values: dict) -> RunConfig:
    cfg = _build(RunConfig, values, "")
    validate(cfg)
    return cfg


def preset_names() -> list[str]:
    folder = resources.files("synthmed") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_dict(name: str) -> dict:
    path = resources.files("synthmed") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}'; available: {', '.join(preset_names())}")
    return yaml.safe_load(path.read_text()) or {}


def load_config(path: str | Path | None = None, preset: str | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults <- preset (or the file's ``preset:`` key) <- YAML file <- overrides."""
    file_values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            file_values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
    preset = preset or file_values.get("preset")
    values = asdict(RunConfig())
    if preset:
        values = merge(values, preset_dict(preset))
        values["preset"] = preset
    values = merge(values, file_values)
    values = merge(values, overrides or {})
    return from_dict(values)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def set_dotted(values: dict, dotted: str, raw: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict, for --set on the CLI."""
    keys = dotted.split(".")
    d = values
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = yaml.safe_load(raw)


def validate(cfg: RunConfig) -> None:
    g = cfg.generator
    choices = {
        "generator.space": (g.space, {"pixel", "latent"}),
        "generator.schedule": (g.schedule, {"linear", "cosine"}),
        "generator.prediction_type": (g.prediction_type, {"epsilon", "v_prediction"}),
        "generator.sampler": (g.sampler, {"dpmsolver++", "ddim", "ddpm"}),
        "data.resize_policy": (cfg.data.resize_policy, {"resize", "error"}),
        "data.split": (cfg.data.split, {"official", "auto", "random"}),
        "data.cross_split_duplicates": (cfg.data.cross_split_duplicates, {"drop", "error", "keep"}),
        "device": (cfg.device, {"auto", "cpu", "cuda"}),
        "select.mode": (cfg.select.mode, {"none", "global", "class"}),
        "evaluate.real_split": (cfg.evaluate.real_split, {"train", "val", "test"}),
        "evaluate.judge.arch": (cfg.evaluate.judge.arch, {"smallcnn", "resnet18"}),
        "downstream.classifier.arch": (cfg.downstream.classifier.arch, {"smallcnn", "resnet18"}),
    }
    for key, (val, allowed) in choices.items():
        if val not in allowed:
            raise ConfigError(f"{key} = {val!r}; choose one of {sorted(allowed)}")
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels = {cfg.data.channels}; choose 1, 3 or null")
    if cfg.data.image_size < 8:
        raise ConfigError(f"data.image_size = {cfg.data.image_size}; must be at least 8")
    down = 2 ** (len(g.block_out_channels) - 1)
    if g.space == "pixel" and cfg.data.image_size % down:
        raise ConfigError(
            f"data.image_size = {cfg.data.image_size} is not divisible by {down} "
            f"(the U-Net halves the image {len(g.block_out_channels) - 1} times); pick a multiple of {down}"
        )
    if not 0 <= g.cond_dropout < 1:
        raise ConfigError("generator.cond_dropout must be in [0, 1)")
    if not 0 < cfg.data.imbalance_ratio <= 1:
        raise ConfigError("data.imbalance_ratio must be in (0, 1]")


def replace(cfg, **changes):
    return dataclasses.replace(cfg, **changes)
