"""The denoisers a diffusion generator can train, behind one call: ``denoiser(x, t, condition)``.

``x`` is the noisy input (pixels or latents), ``t`` the formulation's time input (DDPM timestep or
EDM's c_noise), ``condition`` a :class:`~synthmed.generators.conditioning.Condition` (or bare class
labels). The output has the shape of ``x``: whatever the formulation trains it to predict. All
three are diffusers models:

- ``unet`` (:class:`ClassEmbedUNet`): ``UNet2DModel`` with the class embedding added to the
  timestep embedding (`pcam-ddpm`); with a class *vector* (``generator.class_embed_dim``, or
  prototypes) a ``UNet2DConditionModel`` without cross-attention whose "projection" class
  embedding is concatenated with the time embedding and fed to every residual block (`improve`);
- ``unet-cross-attention`` (:class:`CrossAttentionUNet`): ``UNet2DConditionModel`` attending to
  a token sequence: the class token, then any context tokens the condition carries (captions);
  the class reaches the network only through cross-attention (`blastdiffusion`, `renal-ldm`);
- ``dit`` (:class:`DiTDenoiser`): ``DiTTransformer2DModel`` (Peebles & Xie 2023): patchified
  tokens, adaLN-zero blocks modulated by time + class; patch size, depth, width and heads settable.

Every denoiser records its architecture (:attr:`Denoiser.arch`: the diffusers class and config,
after any adaptation) in the generator's checkpoint, so a saved generator rebuilds without the
folder a pretrained one came from.

A pretrained local diffusers folder (``generator.pretrained``) decides the shapes; a class
conditioning that does not fit this data's classes is adapted (new class rows, trained from
scratch) or refused with a one-line message (:func:`load_pretrained_denoiser`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from synthmed.config import DiffusionConfig
from synthmed.generators.conditioning import ClassVectorTable, Condition, as_condition
from synthmed.generators.networks import _norm_groups, build_unet

#: the denoiser kind each diffusers class serves as
DIFFUSERS_KINDS = {"UNet2DModel": "unet", "UNet2DConditionModel": "unet-cross-attention",
                   "DiTTransformer2DModel": "dit"}
#: the subfolder of a diffusers pipeline folder that holds the denoiser
PIPELINE_SUBFOLDERS = ("unet", "transformer")


class PretrainedError(ValueError):
    """A pretrained denoiser folder cannot be used for this data (one-line message naming the fix)."""


def _diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, name)


class Denoiser(nn.Module):
    """Base: one call ``forward(x, t, condition) -> tensor shaped like x``.

    ``mask_channels`` > 0: the condition's mask (B, M, H, W) is read as extra input channels next to
    ``x`` (zeros when a condition carries none: the null mask). ``num_classes`` is the null class.
    """

    kind = "denoiser"

    def __init__(self, net: nn.Module, num_classes: int, *, mask_channels: int = 0):
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.mask_channels = mask_channels
        #: what rebuilt this denoiser's shapes came from; see :attr:`arch`
        self.extra_arch: dict = {}

    @property
    def arch(self) -> dict:
        """Enough to rebuild this denoiser's modules (then its state_dict fills the weights)."""
        return {"kind": self.kind, "class_name": type(self.net).__name__, "config": dict(self.net.config),
                "num_classes": self.num_classes, "mask_channels": self.mask_channels, **self.extra_arch}

    def _input(self, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        if not self.mask_channels:
            return x
        mask = cond.mask
        if mask is None:
            mask = x.new_zeros((x.shape[0], self.mask_channels, *x.shape[2:]))
        return torch.cat([x, mask.to(x)], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition) -> torch.Tensor:
        raise NotImplementedError


class ClassEmbedUNet(Denoiser):
    """U-Net whose class information joins the time embedding.

    ``table`` None: diffusers' own ``num_class_embeds`` table, added to the time embedding (the
    layout of every synthmed checkpoint before denoisers were selectable). A ``table``: its vector
    (learned class embedding or frozen prototype) goes through the U-Net's projection MLP and is
    concatenated with the time embedding (``net`` is then a ``UNet2DConditionModel`` without
    cross-attention).
    """

    kind = "unet"

    def __init__(self, net, num_classes: int, *, table: ClassVectorTable | None = None, mask_channels: int = 0):
        super().__init__(net, num_classes, mask_channels=mask_channels)
        self.table = table
        if table is not None:
            self.extra_arch = {"table": {"dim": table.dim, "frozen": table.frozen}}

    def forward(self, x, t, condition):
        cond = as_condition(condition)
        x = self._input(x, cond)
        if self.table is None:
            return self.net(x, t, class_labels=cond.labels).sample
        return self.net(x, t, encoder_hidden_states=None, class_labels=self.table(cond.labels)).sample


class CrossAttentionUNet(Denoiser):
    """``UNet2DConditionModel`` attending to [class token, constant token, context tokens...].

    The class token is a row of ``table`` (projected to the cross-attention width when the table is
    narrower, e.g. prototypes). The constant token is learned and the same for every image: with the
    class token alone the attention softmax would have one entry, always 1, and the queries and keys
    would never receive a gradient; with it the network can also attend away from the class.
    ``context_dim``: width of the context tokens a condition may carry (caption embeddings),
    projected to the cross-attention width; None: none accepted.
    """

    kind = "unet-cross-attention"

    def __init__(self, net, num_classes: int, *, table: ClassVectorTable, context_dim: int | None = None,
                 mask_channels: int = 0):
        super().__init__(net, num_classes, mask_channels=mask_channels)
        width = net.config.cross_attention_dim
        self.table = table
        self.class_proj = nn.Identity() if table.dim == width else nn.Linear(table.dim, width)
        self.constant_token = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.context_dim = context_dim
        self.context_proj = (None if context_dim is None else
                             nn.Identity() if context_dim == width else nn.Linear(context_dim, width))
        self.extra_arch = {"table": {"dim": table.dim, "frozen": table.frozen}, "context_dim": context_dim}

    def tokens(self, cond: Condition) -> torch.Tensor:
        cls = self.class_proj(self.table(cond.labels))[:, None, :]
        tokens = torch.cat([cls, self.constant_token.expand(len(cls), 1, -1).to(cls)], dim=1)
        if cond.context is not None:
            if self.context_proj is None:
                raise ValueError("this denoiser was built without context tokens (context_dim None); the condition "
                                 "carries some")
            tokens = torch.cat([tokens, self.context_proj(cond.context.to(tokens))], dim=1)
        return tokens

    def forward(self, x, t, condition):
        cond = as_condition(condition)
        return self.net(self._input(x, cond), t, encoder_hidden_states=self.tokens(cond)).sample


class _ClassVectorLabels(nn.Module):
    """Stands where a DiT block's label table was: labels -> (table vector -> linear) of the block's width.
    Same call as diffusers' ``LabelEmbedding`` (``force_drop_ids`` unused: synthmed drops labels itself)."""

    def __init__(self, table: ClassVectorTable, width: int):
        super().__init__()
        self.table = [table]  # a list: the table is registered once, on the denoiser, not in every block
        self.proj = nn.Linear(table.dim, width)

    def forward(self, labels, force_drop_ids=None):
        return self.proj(self.table[0](labels))


class DiTDenoiser(Denoiser):
    """``DiTTransformer2DModel`` with adaLN-zero blocks.

    Class labels use each block's own label table (diffusers' layout, so a pretrained DiT's tables
    load as they are) with its built-in label dropout switched off: the training loop drops labels
    with its own seeded generator (diffusers' draws from the global RNG, which would break an exact
    resume, and would double the dropout rate). Index ``num_classes`` is the null class (diffusers'
    CFG row). With a ``table`` (class vectors, prototypes) every block's label table is replaced by a
    projection of the shared table.
    """

    kind = "dit"

    def __init__(self, net, num_classes: int, *, table: ClassVectorTable | None = None, mask_channels: int = 0):
        super().__init__(net, num_classes, mask_channels=mask_channels)
        self.table = table
        width = net.inner_dim
        for block in net.transformer_blocks:
            emb = block.norm1.emb
            if table is None:
                emb.class_embedder.dropout_prob = 0.0
            else:
                emb.class_embedder = _ClassVectorLabels(table, width)
        if table is not None:
            self.extra_arch = {"table": {"dim": table.dim, "frozen": table.frozen}}

    def forward(self, x, t, condition):
        cond = as_condition(condition)
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.as_tensor(t, device=x.device).expand(len(x))
        return self.net(self._input(x, cond), t, class_labels=cond.labels).sample


def zero_init_dit(net) -> None:
    """adaLN-zero as in DiT: every block's modulation and the output layer start at zero, so each
    block starts as the identity and the first prediction is zero (diffusers leaves them random)."""
    for block in net.transformer_blocks:
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    for layer in (net.proj_out_1, net.proj_out_2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


# --------------------------------------------------------------------------- building


def _table(cfg: DiffusionConfig, num_classes: int, default_dim: int | None) -> ClassVectorTable | None:
    """The class-vector table the config asks for; None: the network's own label table."""
    if cfg.conditioning == "prototype":
        if cfg.class_embed_dim is None:
            raise ValueError("generator.conditioning = prototype needs generator.class_embed_dim = the prototypes' "
                             "width (synthmed run / train set it from the feature extractor); or use conditioning: "
                             "class")
        return ClassVectorTable(num_classes, cfg.class_embed_dim, frozen=True)
    dim = cfg.class_embed_dim or default_dim
    return None if dim is None else ClassVectorTable(num_classes, dim)


def _unet_blocks(cfg: DiffusionConfig, cross: bool) -> tuple[tuple, tuple]:
    n = len(cfg.block_out_channels)
    down, up = ["DownBlock2D"] * n, ["UpBlock2D"] * n
    if cross:
        # cross-attention below the full resolution only (attention at full resolution dominates CPU time);
        # a one-level U-Net attends at its only level
        for i in range(1 if n > 1 else 0, n):
            down[i] = "CrossAttnDownBlock2D"
            up[n - 1 - i] = "CrossAttnUpBlock2D"
    elif cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return tuple(down), tuple(up)


def build_denoiser(cfg: DiffusionConfig, sample_size: int, channels: int, num_classes: int, *,
                   mask_channels: int = 0, context_dim: int | None = None) -> Denoiser:
    """A new denoiser of the kind ``cfg.denoiser`` names, for ``channels`` x ``sample_size`` inputs."""
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    widths = tuple(cfg.block_out_channels)
    groups = _norm_groups(list(widths))
    in_ch = channels + mask_channels
    if cfg.denoiser == "unet":
        table = _table(cfg, num_classes, None)
        if table is None:
            net = build_unet(cfg, sample_size, channels, num_classes)
            if mask_channels:
                net = type(net).from_config({**net.config, "in_channels": in_ch})
            return ClassEmbedUNet(net, num_classes, mask_channels=mask_channels)
        down, up = _unet_blocks(cfg, cross=False)
        net = UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_ch, out_channels=channels, block_out_channels=widths,
            layers_per_block=cfg.layers_per_block, down_block_types=down, up_block_types=up,
            mid_block_type="UNetMidBlock2D", norm_num_groups=groups, attention_head_dim=8, dropout=cfg.dropout,
            class_embed_type="projection", projection_class_embeddings_input_dim=table.dim,
            class_embeddings_concat=True, cross_attention_dim=cfg.cross_attention_dim)
        return ClassEmbedUNet(net, num_classes, table=table, mask_channels=mask_channels)
    if cfg.denoiser == "unet-cross-attention":
        down, up = _unet_blocks(cfg, cross=True)
        net = UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_ch, out_channels=channels, block_out_channels=widths,
            layers_per_block=cfg.layers_per_block, down_block_types=down, up_block_types=up,
            mid_block_type="UNetMidBlock2DCrossAttn", norm_num_groups=groups, dropout=cfg.dropout,
            cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=8)
        table = _table(cfg, num_classes, cfg.cross_attention_dim)
        return CrossAttentionUNet(net, num_classes, table=table, context_dim=context_dim, mask_channels=mask_channels)
    if cfg.denoiser == "dit":
        net = DiTTransformer2DModel(
            num_attention_heads=cfg.dit_heads, attention_head_dim=cfg.dit_width // cfg.dit_heads, in_channels=in_ch,
            out_channels=channels, num_layers=cfg.dit_depth, dropout=cfg.dropout, sample_size=sample_size,
            patch_size=cfg.dit_patch_size, num_embeds_ada_norm=num_classes)
        zero_init_dit(net)
        return DiTDenoiser(net, num_classes, table=_table(cfg, num_classes, None), mask_channels=mask_channels)
    raise ValueError(f"generator.denoiser = {cfg.denoiser!r}; choose unet, unet-cross-attention or dit")


def denoiser_from_arch(arch: dict) -> Denoiser:
    """Rebuild the modules a checkpoint's :attr:`Denoiser.arch` describes (weights come from its state_dict)."""
    net = _diffusers_class(arch["class_name"]).from_config(arch["config"])
    c, m = arch["num_classes"], arch.get("mask_channels", 0)
    spec = arch.get("table")
    table = None if spec is None else ClassVectorTable(c, spec["dim"], frozen=spec["frozen"])
    if arch["kind"] == "unet":
        return ClassEmbedUNet(net, c, table=table, mask_channels=m)
    if arch["kind"] == "unet-cross-attention":
        return CrossAttentionUNet(net, c, table=table, context_dim=arch.get("context_dim"), mask_channels=m)
    return DiTDenoiser(net, c, table=table, mask_channels=m)


def legacy_state_dict(state: dict) -> dict:
    """A checkpoint's denoiser weights in today's layout: checkpoints from before denoisers were
    selectable hold a bare ``UNet2DModel``'s keys, now under ``net.``."""
    if state and not any(k.startswith("net.") for k in state):
        return {f"net.{k}": v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------- pretrained folders


def pretrained_model_folder(path: str | Path) -> Path:
    """The folder holding the denoiser's config.json: ``path`` itself, or its ``unet/`` or ``transformer/``
    subfolder when ``path`` is a diffusers pipeline folder."""
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return p
    for sub in PIPELINE_SUBFOLDERS:
        if (p / sub / "config.json").is_file():
            return p / sub
    raise PretrainedError(f"generator.pretrained = {path}: no diffusers model there (expected config.json in it or in "
                          f"its {' or '.join(s + '/' for s in PIPELINE_SUBFOLDERS)} subfolder); save one with "
                          "save_pretrained(), or set generator.pretrained: null")


def weights_sha256(folder: Path) -> dict:
    """sha256 of every weight file in the model folder (and of its config), for provenance."""
    out = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt") or f.name == "config.json"):
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[f.name] = h.hexdigest()
    return out


def load_pretrained_denoiser(cfg: DiffusionConfig, sample_size: int, channels: int, num_classes: int
                             ) -> tuple[Denoiser, dict]:
    """The denoiser in the local folder ``cfg.pretrained``, made to fit this data: returns it and the
    provenance record (source folder, model class, weight hashes, what was adapted).

    Its config decides the shapes (``block_out_channels`` and the DiT sizes of ``cfg`` are unused).
    Refused: another denoiser kind than ``generator.denoiser``, other input channels, a DiT whose
    patch does not divide the input, conditioning it cannot take. Adapted: a class table of another
    size (or none) becomes a new one for these classes (trained from scratch: the source's classes
    are not these), recorded in ``adapted``.
    """
    folder = pretrained_model_folder(cfg.pretrained)
    config = json.loads((folder / "config.json").read_text())
    name = config.get("_class_name")
    if name not in DIFFUSERS_KINDS:
        raise PretrainedError(f"generator.pretrained = {cfg.pretrained}: holds a {name}; synthmed fine-tunes "
                              f"{', '.join(DIFFUSERS_KINDS)}")
    kind = DIFFUSERS_KINDS[name]
    if kind != cfg.denoiser:
        raise PretrainedError(f"generator.pretrained = {cfg.pretrained} holds a {name}: set generator.denoiser: {kind} "
                              f"(now {cfg.denoiser})")
    if cfg.conditioning != "class" and kind != "unet-cross-attention":
        raise PretrainedError(f"generator.conditioning = {cfg.conditioning} with a pretrained {name} is not supported; "
                              "use conditioning: class, or a pretrained UNet2DConditionModel")
    if config.get("in_channels") != channels:
        raise PretrainedError(f"generator.pretrained = {cfg.pretrained}: its {name} takes {config.get('in_channels')}-"
                              f"channel inputs, this generator's are {channels}-channel "
                              f"({'latents: set generator.autoencoder to the matching autoencoder' if cfg.space == 'latent' else 'pixels: set data.channels'})")
    net = _diffusers_class(name).from_pretrained(str(folder), local_files_only=True)
    adapted = []
    if kind == "unet":
        if net.config.class_embed_type is not None:
            raise PretrainedError(f"generator.pretrained = {cfg.pretrained}: its UNet2DModel has class_embed_type "
                                  f"{net.config.class_embed_type!r}; synthmed conditions a UNet2DModel through its "
                                  "class table (class_embed_type null)")
        if net.config.num_class_embeds != num_classes + 1:
            was = net.config.num_class_embeds
            net.class_embedding = nn.Embedding(num_classes + 1, net.time_embedding.linear_2.out_features)
            net.register_to_config(num_class_embeds=num_classes + 1)
            adapted.append(f"class table {was} -> {num_classes + 1} rows ({num_classes} classes + null), new rows "
                           "trained from scratch")
        return ClassEmbedUNet(net, num_classes), _provenance(cfg, folder, name, adapted)
    if kind == "unet-cross-attention":
        if net.config.class_embed_type is not None or net.config.addition_embed_type is not None:
            raise PretrainedError(f"generator.pretrained = {cfg.pretrained}: its UNet2DConditionModel also takes class "
                                  "or added embeddings (class_embed_type / addition_embed_type); synthmed conditions it "
                                  "through cross-attention only")
        table = _table(cfg, num_classes, net.config.cross_attention_dim)
        adapted.append(f"class tokens: a new table of {num_classes} classes + null, width {table.dim}"
                       f"{'' if table.dim == net.config.cross_attention_dim else ' projected to the cross-attention width'}")
        return CrossAttentionUNet(net, num_classes, table=table), _provenance(cfg, folder, name, adapted)
    if sample_size % net.config.patch_size:
        raise PretrainedError(f"generator.pretrained = {cfg.pretrained}: its DiT patch size {net.config.patch_size} "
                              f"does not divide this generator's {sample_size}x{sample_size} inputs")
    if net.config.num_embeds_ada_norm != num_classes:
        was = net.config.num_embeds_ada_norm
        from diffusers.models.embeddings import LabelEmbedding

        for block in net.transformer_blocks:
            block.norm1.emb.class_embedder = LabelEmbedding(num_classes, net.inner_dim, 0.1)
        net.register_to_config(num_embeds_ada_norm=num_classes)
        adapted.append(f"label tables {was} -> {num_classes} classes + null in every block, trained from scratch")
    return DiTDenoiser(net, num_classes), _provenance(cfg, folder, name, adapted)


def _provenance(cfg: DiffusionConfig, folder: Path, name: str, adapted: list[str]) -> dict:
    return {"source": str(cfg.pretrained), "model_folder": str(folder), "model_class": name,
            "weights_sha256": weights_sha256(folder), "adapted": adapted}


__all__ = ["Denoiser", "ClassEmbedUNet", "CrossAttentionUNet", "DiTDenoiser", "build_denoiser", "denoiser_from_arch",
           "load_pretrained_denoiser", "legacy_state_dict", "PretrainedError", "weights_sha256"]
