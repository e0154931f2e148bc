"""Data cards: ``card.json`` + ``card.md`` beside every synthetic ``images.npz`` synthmed writes.

A synthetic set handed to a colleague must still say what it is: which generator made it with
which settings, from which training split (fingerprint and class counts), how it was sampled
(sampler, steps, guidance, seed) and selected, how it scored when evaluated (with the feature
extractor and image counts every number rests on), what the memorisation audit found, what it
is for and what it must not be used for. ``card.json`` holds the machine-readable record,
``card.md`` the same for people.

:func:`write_data_card` is called by :func:`synthmed.data.export.save_image_set` for every
synthetic set; :func:`update_data_card` adds the evaluation summary and the memorisation result
after ``synthmed evaluate`` (or a run's evaluation step). Anything not recorded at sampling time
(e.g. the class counts of the training split, for generators saved before synthmed recorded them)
is written as ``"unknown"``, never guessed.
"""

from __future__ import annotations

import json
import os
import math
from datetime import datetime, timezone
from pathlib import Path

import synthmed
from synthmed.files import atomic_write_text

CARD_JSON = "card.json"
CARD_MD = "card.md"
CARD_FORMAT = "synthmed.card/1"
UNKNOWN = "unknown"

INTENDED_USE = (
    "Research use: augmenting or balancing the training data of image classifiers and studying generative "
    "models on the data it was trained from, always judged against held-out REAL images (the downstream "
    "comparison of synthmed)."
)
KNOWN_LIMITS = (
    "Not validated for diagnosis: these images are generated, they show no real patient and must not be used for "
    "clinical decisions, as clinical evidence, or to train a model for clinical use without a separate validation "
    "on real data.",
    "A class label is the class the generator was asked for, not a verified finding; the conditional accuracy "
    "below says how often a classifier trained on real images agrees.",
    "The images inherit the training split's acquisition, population and class balance, and its biases; they "
    "add no information about patients or devices it did not contain.",
    "Distribution metrics (FID, KID, precision, recall) are measured in the named feature extractor's space and "
    "are comparable only between sets evaluated with the same extractor and image counts.",
    "The memorisation audit finds near-copies of training images by nearest-neighbour distance; a set with "
    "flagged images can leak training data, and an unflagged set is not proof of privacy.",
)

#: sample-meta keys that describe how the images were sampled
_SAMPLING_KEYS = ("sampler", "steps", "guidance", "seed", "seconds", "images_per_second")
#: generator settings worth a line in card.md (the full config is in card.json)
_SETTING_KEYS = ("space", "block_out_channels", "num_train_timesteps", "prediction_type", "train_steps",
                 "batch_size", "lr", "cond_dropout", "ema_decay", "hflip", "vflip", "transpose",
                 # GAN kinds (r3gan, progan)
                 "widths", "train_kimg", "burn_in", "gamma_start", "gamma_end", "aug_end", "phase_kimg", "gp_lambda")


def describe_set(ds, files: list[str] | None = None) -> dict:
    """What a card says about the images themselves (counts from the images, never from stale meta)."""
    return {"name": ds.name, "num_images": len(ds), "synthetic": bool(ds.synthetic),
            "class_counts": dict(zip(ds.class_names, ds.class_counts())), "fingerprint": ds.fingerprint(),
            "image_size": int(ds.image_size) if len(ds) else None, "channels": int(ds.channels) if len(ds) else None,
            "files": list(files) if files is not None else ["images.npz", "info.json"]}


def build_card(meta: dict, set_info: dict, evaluation_summary: dict | None = None,
               memorisation: dict | None = None) -> dict:
    """The card as a dict; ``meta`` is the set's ``ImageDataset.meta`` (sample provenance)."""
    meta = dict(meta or {})
    config = meta.get("generator_config") or {}
    generator = {
        "kind": meta.get("generator", UNKNOWN),
        "space": meta.get("space", config.get("space", UNKNOWN)),
        "train_steps": meta.get("train_steps", UNKNOWN),
        "settings": config or UNKNOWN,
    }
    training = {"fingerprint": meta.get("train_fingerprint") or UNKNOWN,
                "class_counts": meta.get("train_class_counts") or UNKNOWN}
    sampling = {key: meta.get(key, UNKNOWN) for key in _SAMPLING_KEYS}
    selection_seed = (meta.get("selection") or {}).get("seed")
    if "seed" not in meta and selection_seed is not None:
        # generate-until-N-pass rounds: each round's seed is derived from this one
        sampling["seed"] = selection_seed
        sampling["seed_note"] = "base seed of the filter's generate-until rounds (round r samples with a seed derived from it)"
    return {
        "format": CARD_FORMAT,
        "synthmed_version": synthmed.__version__,
        "written_at": _now(),
        "set": dict(set_info),
        "generator": generator,
        "training_data": training,
        "sampling": sampling,
        "selection": meta.get("selection"),
        "evaluation": evaluation_summary,
        "memorisation": memorisation,
        "intended_use": INTENDED_USE,
        "known_limits": list(KNOWN_LIMITS),
    }


def write_data_card(folder: str | os.PathLike, meta: dict, evaluation_summary: dict | None = None,
                    memorisation: dict | None = None, *, set_info: dict | None = None) -> dict:
    """Write ``card.json`` and ``card.md`` into ``folder``; returns the card.

    ``set_info``: :func:`describe_set` of the images (required: a card without counts and
    fingerprint could describe any set)."""
    if set_info is None:
        raise ValueError("write_data_card needs set_info (describe_set(dataset)): the card must name its images")
    card = build_card(meta, set_info, evaluation_summary, memorisation)
    _write(Path(folder), card)
    return card


def read_data_card(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / CARD_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def update_data_card(folder: str | os.PathLike, *, evaluation_summary: dict | None = None,
                     memorisation: dict | None = None, set_info: dict | None = None, meta: dict | None = None) -> dict:
    """Add the evaluation summary and/or memorisation result to the card in ``folder``.

    Without a card (a set written before cards existed) one is made from ``set_info`` and ``meta``.
    The summaries name the fingerprint of the set they were computed on; a card of other images is
    refused rather than given someone else's numbers."""
    folder = Path(folder)
    card = read_data_card(folder)
    if card is None:
        if set_info is None:
            raise ValueError(f"{folder} has no {CARD_JSON}; pass set_info (and meta) to create one")
        card = build_card(meta or {}, set_info)
    own = (card.get("set") or {}).get("fingerprint")
    for what, summary in (("evaluation", evaluation_summary), ("memorisation", memorisation)):
        if summary is None:
            continue
        theirs = summary.get("synthetic_fingerprint")
        if own and theirs and own != theirs:
            raise ValueError(f"{folder / CARD_JSON} describes images {own}, but the {what} was computed on {theirs}; "
                             f"evaluate the set in {folder} itself")
        card[what] = summary
    card["written_at"] = _now()
    _write(folder, card)
    return card


# ----------------------------------------------------------------------------- markdown
def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x, digits) for x in v) + "]"
    return str(v)


def _counts(counts) -> str:
    if not isinstance(counts, dict):
        return _fmt(counts)
    return ", ".join(f"{c}: {n}" for c, n in counts.items()) + f" (total {sum(counts.values())})"


def _interval(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "–"
    text = _fmt(e["value"])
    if e.get("ci_low") is not None and e.get("ci_high") is not None:
        text += f" [{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}]"
    return text


def render_card_md(card: dict) -> str:
    s, g, t, smp = card["set"], card["generator"], card["training_data"], card["sampling"]
    lines = [
        f"# Data card: {s.get('name')}",
        "",
        f"**Synthetic images generated by synthmed {card.get('synthmed_version')}: not validated for diagnosis.**",
        "",
        "## The set",
        "",
        "| | |", "|---|---|",
        f"| images | {s.get('num_images')} ({_fmt(s.get('image_size'))} px, {_fmt(s.get('channels'))} channel(s)) |",
        f"| per class | {_counts(s.get('class_counts'))} |",
        f"| fingerprint | `{s.get('fingerprint')}` |",
        f"| files | {', '.join(s.get('files') or [])}, card.json, card.md |",
        f"| card written | {card.get('written_at')} |",
        "",
        "## Generator and training data",
        "",
        "| | |", "|---|---|",
        f"| generator | {g.get('kind')} ({g.get('space')} space), trained for {_fmt(g.get('train_steps'))} steps |",
    ]
    settings = g.get("settings")
    if isinstance(settings, dict):
        shown = ", ".join(f"{k}={_fmt(settings[k])}" for k in _SETTING_KEYS if k in settings)
        lines.append(f"| settings | {shown} (all in card.json) |")
    else:
        lines.append(f"| settings | {_fmt(settings)} |")
    lines += [
        f"| training split fingerprint | `{t.get('fingerprint')}` |",
        f"| training split per class | {_counts(t.get('class_counts'))} |",
        "",
        "## Sampling",
        "",
        f"Sampler {smp.get('sampler')}, {_fmt(smp.get('steps'))} steps, "
        + (f"guidance {_fmt(smp.get('guidance'))}, " if smp.get("guidance") is not None else "no guidance (GAN), ")
        + f"seed {_fmt(smp.get('seed'))}.",
    ]
    sel = card.get("selection")
    if sel and sel.get("mode") == "confidence":
        who = sel.get("selector") or {}
        lines.append(f"Confidence-filtered: kept when the judge ({who.get('arch')} seed {_fmt(who.get('seed'))}, weights "
                     f"`{who.get('weights_hash')}`) gives the intended class p >= {_fmt(sel.get('tau'))}; that judge "
                     "must not score this set's conditional accuracy (`synthmed evaluate` uses an independent grader).")
    elif sel:
        lines.append(f"Realism-filtered: {', '.join(f'{k} {_fmt(v)}' for k, v in sel.items())}.")
    lines += ["", "## Evaluation", ""]
    lines += _evaluation_md(card.get("evaluation"))
    lines += ["", "## Memorisation audit", ""]
    mem = card.get("memorisation")
    if mem:
        lines.append(f"{mem.get('n_flagged')} of {mem.get('n')} images flagged as near-copies of training images "
                     f"({_fmt(mem.get('n_exact_copies'))} exact copies); rule: {mem.get('rule')}.")
        per_class = mem.get("per_class") or {}
        if per_class:
            lines.append("Flagged per class: " + ", ".join(f"{c}: {n}" for c, n in per_class.items()) + ".")
    else:
        lines.append("Not audited yet: `synthmed evaluate REAL THIS_FOLDER` compares every image with the "
                     "training images.")
    lines += ["", "## Intended use", "", card.get("intended_use", ""), "", "## Known limits", ""]
    lines += [f"- {limit}" for limit in card.get("known_limits", [])]
    return "\n".join(lines) + "\n"


def _evaluation_md(ev: dict | None) -> list[str]:
    if not ev:
        return ["Not evaluated yet: run `synthmed evaluate REAL THIS_FOLDER` (the numbers land here)."]
    ex, real = ev.get("extractor") or {}, ev.get("real") or {}
    out = [f"Evaluated {ev.get('evaluated_at')} against '{real.get('name')}' ({_fmt(real.get('num_images'))} real "
           f"images, fingerprint `{real.get('fingerprint')}`)."]
    ca = ev.get("conditional_accuracy")
    if ca:
        judge = ca.get("judge") or {}
        scored_by = ca.get("scored_by") or {}
        who = (f"an independent {judge.get('arch')} judge, seed {_fmt(scored_by.get('seed'))}, not the classifier that "
               "selected these images," if scored_by.get("role") == "independent grader" else f"a {judge.get('arch')} judge")
        out += ["", f"**Conditional accuracy** ({who} trained on {_fmt(judge.get('n_train'))} "
                    f"real training images, {_fmt(judge.get('real_test_accuracy'))} accuracy on real test images; "
                    f"chance {_fmt(ca.get('chance'))}): {_interval(ca.get('overall'))} of {_fmt(ca.get('n'))} images "
                    "labelled as the class they were generated for.", "",
                "| class | conditional accuracy [95% CI] | images | judge on real test images |", "|---|---|---|---|"]
        for c, e in (ca.get("per_class") or {}).items():
            out.append(f"| {c} | {_interval(e)} | {_fmt(e.get('n'))} | {_fmt(e.get('real_accuracy'))} |")
    dist = ev.get("distribution")
    if dist:
        out += ["", f"**Distribution metrics, all classes** in the feature space of `{ex.get('name')}` "
                    f"({_fmt(ex.get('dim'))}-d{', trained on the real training split' if ex.get('trained_on') else ''}"
                    f"), {dist.get('n_real')} real vs {dist.get('n_synthetic')} synthetic images, "
                    f"95% intervals by {dist.get('ci_method')}:", "",
                "| metric | value [95% CI] |", "|---|---|"]
        for m in ("fid", "kid", "precision", "recall"):
            if m in (dist.get("metrics") or {}):
                out.append(f"| {m} | {_interval(dist['metrics'][m])} |")
        bc = (dist.get("metrics") or {}).get("fid_bias_corrected")
        if bc and bc.get("value") is not None:
            out.append(f"| fid, bias-corrected (population) | {_interval(bc)} |")
    return out


# ----------------------------------------------------------------------------- io
def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _json_safe(obj):
    """Strict JSON: NaN / inf become null, numpy scalars Python ones (via ``default=str`` otherwise)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalars and arrays
        return _json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write(folder: Path, card: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    card = _json_safe(card)
    atomic_write_text(json.dumps(card, indent=2, default=str, allow_nan=False) + "\n", folder / CARD_JSON)
    atomic_write_text(render_card_md(card), folder / CARD_MD)


__all__ = ["CARD_JSON", "CARD_MD", "INTENDED_USE", "KNOWN_LIMITS", "build_card", "describe_set", "read_data_card",
           "render_card_md", "update_data_card", "write_data_card"]
