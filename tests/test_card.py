"""Data cards: every synthetic set save_image_set writes has card.json + card.md that say what it is."""

import json

import numpy as np
import pytest
from toydata import toy

from synthmed.data.card import KNOWN_LIMITS, read_data_card, update_data_card
from synthmed.data.export import load_image_set, save_image_set

SAMPLE_META = {
    "generator": "diffusion", "space": "pixel", "sampler": "dpmsolver++", "steps": 20, "guidance": 2.0, "seed": 7,
    "train_fingerprint": "abc123", "seconds": 1.5, "images_per_second": 8.0, "train_steps": 300,
    "train_class_counts": {"bright": 40, "dark": 30, "striped": 20},
    "generator_config": {"space": "pixel", "block_out_channels": [16, 32], "train_steps": 300, "lr": 2e-3},
}


def synthetic_set(meta=SAMPLE_META, counts=(4, 3, 2)):
    ds = toy(list(counts), seed=1, synthetic=True)
    ds.name, ds.meta = "synthetic", dict(meta)
    return ds


def test_saved_synthetic_set_has_a_card_with_its_provenance(tmp_path):
    ds = synthetic_set()
    save_image_set(ds, tmp_path / "s")
    card = json.loads((tmp_path / "s" / "card.json").read_text())
    assert {"set", "generator", "training_data", "sampling", "evaluation", "memorisation", "intended_use",
            "known_limits"} <= set(card)
    assert card["set"]["fingerprint"] == ds.fingerprint() and card["set"]["num_images"] == 9
    assert card["set"]["class_counts"] == {"bright": 4, "dark": 3, "striped": 2}
    assert card["generator"]["kind"] == "diffusion" and card["generator"]["settings"]["lr"] == 2e-3
    assert card["training_data"] == {"fingerprint": "abc123", "class_counts": SAMPLE_META["train_class_counts"]}
    assert card["sampling"]["seed"] == 7 and card["sampling"]["guidance"] == 2.0
    assert card["evaluation"] is None and card["memorisation"] is None
    md = (tmp_path / "s" / "card.md").read_text()
    assert "not validated for diagnosis" in md
    assert "abc123" in md and "bright: 40, dark: 30, striped: 20 (total 90)" in md and "Not evaluated yet" in md
    assert all(limit in md for limit in KNOWN_LIMITS)


def test_what_the_sampler_did_not_record_is_unknown_not_guessed(tmp_path):
    save_image_set(synthetic_set({"generator": "diffusion", "train_fingerprint": "abc123"}), tmp_path / "s")
    card = read_data_card(tmp_path / "s")
    assert card["training_data"]["class_counts"] == "unknown"
    assert card["sampling"]["sampler"] == "unknown" and card["generator"]["settings"] == "unknown"
    assert "training split per class | unknown" in (tmp_path / "s" / "card.md").read_text()


def test_real_sets_get_no_card(tmp_path):
    save_image_set(toy(3, seed=0), tmp_path / "r")
    assert not (tmp_path / "r" / "card.json").exists()


def test_a_subset_of_a_loaded_set_keeps_its_own_counts(tmp_path):
    save_image_set(synthetic_set(), tmp_path / "a")
    loaded = load_image_set(tmp_path / "a")
    part = loaded.subset(np.flatnonzero(loaded.labels == 0), name="part")
    save_image_set(part, tmp_path / "b")
    info = json.loads((tmp_path / "b" / "info.json").read_text())
    assert info["num_images"] == 4 and info["class_counts"] == {"bright": 4, "dark": 0, "striped": 0}
    card = read_data_card(tmp_path / "b")
    assert card["set"]["num_images"] == 4 and card["training_data"]["fingerprint"] == "abc123"


def test_update_adds_summaries_and_refuses_other_images(tmp_path):
    ds = synthetic_set()
    save_image_set(ds, tmp_path / "s")
    summary = {"synthetic_fingerprint": ds.fingerprint(), "evaluated_at": "now",
               "distribution": {"n_real": 30, "n_synthetic": 9, "ci_method": "subsampling m=0.5n",
                                "metrics": {"fid": {"value": 3.0, "ci_low": 2.0, "ci_high": 4.5}}}}
    update_data_card(tmp_path / "s", evaluation_summary=summary,
                     memorisation={"n": 9, "n_flagged": 1, "synthetic_fingerprint": ds.fingerprint(), "rule": "r"})
    card = read_data_card(tmp_path / "s")
    assert card["evaluation"]["distribution"]["metrics"]["fid"]["value"] == 3.0
    md = (tmp_path / "s" / "card.md").read_text()
    assert "| fid | 3 [2, 4.5] |" in md and "1 of 9 images flagged" in md
    with pytest.raises(ValueError, match="computed on"):
        update_data_card(tmp_path / "s", evaluation_summary={**summary, "synthetic_fingerprint": "other"})
    # new images in the same folder: a fresh card, the old evaluation does not carry over
    save_image_set(synthetic_set(counts=(2, 2, 2)), tmp_path / "s")
    assert read_data_card(tmp_path / "s")["evaluation"] is None
