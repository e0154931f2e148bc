"""The steps of a run whose synthetic images carry masks or captions: the segmenter trained on the real
masks, caption accuracy (renal-ldm 4.2.1) and the real:synthetic segmentation ratio sweep. Each runs
under ``segmentation.<step>``: "off", "auto" (when the images carry what it needs) or "on" (refusing to
skip); each result is cached in ``out/segmentation/`` while its inputs match."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

from synthmed.config import RunConfig
from synthmed.data.dataset import DataSplits, ImageDataset
from synthmed.files import atomic_write_json, json_default
from synthmed.pipeline.run_folder import log as _log
from synthmed.pipeline.run_folder import update_run_info as _update_run_info


#: the segmentation settings that change what a segmenter learns (the run-level switches, seeds and
#: protocols do not), which key the cached segmenter of caption accuracy
_SEGMENTER_FIELDS = ("widths", "lr", "batch_size", "steps", "eval_every", "patience", "weight_decay", "flips", "loss",
                     "class_weighting")


def _real_masks_missing(splits: DataSplits) -> list[str]:
    return [s for s in ("train", "val", "test") if getattr(splits, s).masks is None]


def check_mask_steps(cfg: RunConfig, splits: DataSplits) -> None:
    """Before any training: a mask step switched "on" needs masks on every real split."""
    from synthmed.config import ConfigError

    missing = _real_masks_missing(splits)
    for key in ("caption_accuracy", "ratio_sweep"):
        if getattr(cfg.segmentation, key) == "on" and missing:
            raise ConfigError(f"segmentation.{key} = 'on' but the real {'/'.join(missing)} split has no masks; give "
                              "the data a mask_path column (csv:) or set data.masks.embryo: true, or set "
                              f"segmentation.{key} to auto or off")


def _mask_step_applies(cfg: RunConfig, key: str, splits: DataSplits, synthetic: ImageDataset, needs: str) -> bool:
    """Whether the step of ``segmentation.<key>`` runs: "off" never; "auto" when the synthetic set carries
    ``needs`` (captions / masks) and the real splits masks; "on" the same, refusing to skip."""
    from synthmed.config import ConfigError

    mode = getattr(cfg.segmentation, key)
    if mode == "off":
        return False
    has = (synthetic.captions if needs == "captions" else synthetic.masks) is not None
    ok = has and not _real_masks_missing(splits)
    if not ok and mode == "on":
        if _real_masks_missing(splits):
            check_mask_steps(cfg, splits)
        raise ConfigError(f"segmentation.{key} = 'on' but the synthetic set '{synthetic.name}' carries no {needs}; "
                          f"generate with {needs[:-1]} conditioning, or set segmentation.{key} to auto or off")
    return ok


def segmenter_key(cfg: RunConfig, splits: DataSplits) -> dict:
    """What the run's segmenter is, for its cache: real train / val fingerprints, seed, training settings."""
    seg = cfg.segmentation
    return {"train_fingerprint": splits.train.fingerprint(), "val_fingerprint": splits.val.fingerprint(),
            "seed": cfg.seed, "settings": {k: getattr(seg, k) for k in _SEGMENTER_FIELDS}}


def step_segmenter(cfg: RunConfig, out: Path, splits: DataSplits, device: str, *, quiet: bool = False):
    """The U-Net segmenter trained on the REAL training masks (early-stopped on real val, seed ``cfg.seed``),
    kept in ``out/segmentation/segmenter/`` and reused while its key (:func:`segmenter_key`) matches."""
    from synthmed.metrics.segmenter import load_segmenter, train_segmenter

    folder = out / "segmentation" / "segmenter"
    key = segmenter_key(cfg, splits)
    info = folder / "segmenter.json"
    if info.is_file() and (folder / "segmenter.pt").is_file() \
            and json.loads(info.read_text()).get("meta", {}).get("key") == json.loads(json.dumps(key)):
        seg = load_segmenter(folder, device=device)
        seg.meta["cached"] = True
        _log(f"segmenter: loaded from {folder}", quiet)
        return seg
    t0 = time.time()
    seg = train_segmenter(splits.train, splits.val, cfg.segmentation, seed=cfg.seed, device=device)
    seg.meta.update(key=key, seconds=time.time() - t0)
    seg.save(folder)
    seg.meta["cached"] = False
    _update_run_info(out, timings={"segmenter": seg.meta["seconds"]})
    h = seg.history
    _log(f"segmenter: U-Net {cfg.segmentation.widths} trained on {len(splits.train)} real training masks "
         f"({cfg.segmentation.loss}, best real-val step {h['best_step']} of {h['steps']}, {seg.meta['seconds']:.0f} s)",
         quiet)
    return seg


def _saved_result(res: dict, path: Path) -> dict:
    """Write ``res`` to ``path`` and return it as read back, so a fresh result and a cached one are equal."""
    atomic_write_json(res, path)
    return json.loads(path.read_text())


def _cached_result(path: Path, key: dict) -> dict | None:
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    return res if res.get("key") == json.loads(json.dumps(key)) else None


def step_caption_accuracy(cfg: RunConfig, out: Path, splits: DataSplits, synthetic: ImageDataset, device: str, *,
                          segment=None, quiet: bool = False) -> dict | None:
    """Caption accuracy (renal-ldm 4.2.1) of a captioned synthetic set, read by the run's segmenter
    (:func:`step_segmenter`), with the segmenter's real-test Dice and the same statistic of the real test
    images (their true masks' captions) as the reference. None when ``segmentation.caption_accuracy``
    does not apply; written to ``out/segmentation/caption_accuracy.json`` and reused while its inputs match.
    ``segment``: a segmenter of your own (callable images -> (N, H, W) label maps) instead of the U-Net;
    its result is neither cached nor read from the cache."""
    from synthmed.data.captions import CaptionRules
    from synthmed.data.dataset import DataError
    from synthmed.metrics.caption_accuracy import caption_accuracy

    if not _mask_step_applies(cfg, "caption_accuracy", splits, synthetic, "captions"):
        return None
    path = out / "segmentation" / "caption_accuracy.json"
    rules_cfg = {k: getattr(cfg.captions, k) for k in ("opening", "class_names", "low_sentence", "medium_sentence",
                                                        "high_sentence", "low_below", "high_above", "min_pixels")}
    key = {"synthetic_fingerprint": synthetic.fingerprint(), "test_fingerprint": splits.test.fingerprint(),
           "segmenter": segmenter_key(cfg, splits), "captions": rules_cfg}
    cached = _cached_result(path, key) if segment is None else None
    if cached is not None:
        _log(f"caption accuracy: from {path}", quiet)
        return cached
    t0 = time.time()
    seg = step_segmenter(cfg, out, splits, device, quiet=quiet) if segment is None else None
    try:
        rules = CaptionRules.from_config(cfg.captions, splits.train.mask_class_names)
        if segment is not None:
            res = caption_accuracy(synthetic, segment, rules, real_test=splits.test,
                                   segmenter_info={"kind": "user callable", "n_test": len(splits.test)})
            res.update(seconds=time.time() - t0)
            return json.loads(json.dumps(res, default=json_default))
        res = caption_accuracy(synthetic, seg, rules, real_test=splits.test, segmenter_info={
            "kind": "synthmed U-Net", "trained_on": "real training split", "n_train": len(splits.train),
            "train_fingerprint": splits.train.fingerprint(), "seed": cfg.seed, "widths": list(cfg.segmentation.widths),
            "loss": cfg.segmentation.loss, "class_weighting": cfg.segmentation.class_weighting,
            "best_step": seg.history["best_step"], "steps": seg.history["steps"], "n_test": len(splits.test),
            "cached": seg.meta.get("cached", False)})
    except DataError as exc:
        if cfg.segmentation.caption_accuracy == "on":
            raise
        # auto: the run's other results stand; the report says why this one is missing
        warnings.warn(f"caption accuracy skipped: {exc}")
        return {"skipped": str(exc), "key": key}
    res.update(key=key, seconds=time.time() - t0)
    res = _saved_result(res, path)
    _update_run_info(out, timings={"caption_accuracy": res["seconds"]})
    ref = res["real_reference"]
    _log(f"caption accuracy: {res['n_images']} synthetic images, presence {res['mean_presence_accuracy']:.3f} / level "
         f"{res['mean_level_accuracy']:.3f} (real test reference {ref['mean_presence_accuracy']:.3f} / "
         f"{ref['mean_level_accuracy']:.3f}; segmenter mean Dice {res['segmenter']['real_test']['mean_dice']:.3f})",
         quiet)
    return res


def step_segmentation_downstream(cfg: RunConfig, out: Path, splits: DataSplits, synthetic: ImageDataset, device: str,
                                 *, quiet: bool = False) -> dict | None:
    """renal-ldm's real:synthetic segmentation ratio sweep (:mod:`synthmed.downstream.segmentation`) with the
    run's synthetic image-mask pairs. None when ``segmentation.ratio_sweep`` does not apply. Under "auto" a
    ratio the synthetic pool is too small for is left out (and said); under "on" it is an error. Written to
    ``out/segmentation/ratio_sweep.json`` and reused while its inputs match."""
    from dataclasses import asdict

    from synthmed.config import ConfigError
    from synthmed.downstream.protocols import (NotEnoughSyntheticError, ProtocolOptions, build_plan,
                                               expand_protocols)
    from synthmed.downstream.segmentation import segmentation_experiment

    if not _mask_step_applies(cfg, "ratio_sweep", splits, synthetic, "masks"):
        return None
    seg_cfg = cfg.segmentation
    path = out / "segmentation" / "ratio_sweep.json"
    key = {"synthetic_fingerprint": synthetic.fingerprint(),
           **{f"{s}_fingerprint": getattr(splits, s).fingerprint() for s in ("train", "val", "test")},
           "settings": {k: v for k, v in asdict(seg_cfg).items() if k not in ("caption_accuracy", "ratio_sweep")}}
    cached = _cached_result(path, key)
    if cached is not None:
        _log(f"segmentation downstream: from {path}", quiet)
        return cached
    protocols, short = [], []
    for name in expand_protocols(list(seg_cfg.protocols)):
        try:
            build_plan(name, splits.train, synthetic, ProtocolOptions(seed=seg_cfg.seeds[0]))
            protocols.append(name)
        except NotEnoughSyntheticError as exc:
            short.append((name, str(exc)))
    if short and seg_cfg.ratio_sweep == "on":
        raise ConfigError(f"segmentation.ratio_sweep = 'on': {short[0][1]} (raise samples_per_class, or list fewer "
                          "segmentation.protocols)")
    if not protocols:
        return {"skipped": "; ".join(why for _, why in short), "key": key}
    t0 = time.time()
    res = segmentation_experiment(splits, synthetic, replace(seg_cfg, protocols=protocols), device=device,
                                  progress=None if quiet else (lambda m: _log(f"segmentation downstream: {m}", quiet)))
    res.update(key=key, seconds=time.time() - t0, synthetic={"n": len(synthetic), "fingerprint": synthetic.fingerprint(),
                                                              "name": synthetic.name},
               n_train_real=len(splits.train),
               left_out={name: why for name, why in short},
               warnings=[f"segmentation downstream: {name} left out, {why}" for name, why in short])
    res = _saved_result(res, path)
    _update_run_info(out, timings={"segmentation_downstream": res["seconds"]})
    base = res["summary"].get("ratio-100:0", {}).get("mean_dice", {})
    _log(f"segmentation downstream: {len(protocols)} ratios x {len(seg_cfg.seeds)} seeds in {res['seconds']:.0f} s"
         + (f"; 100:0 mean Dice {base['mean']:.3f}" if base.get("mean") is not None else ""), quiet)
    return res


def mask_step_warnings(captions: dict | None, seg_down: dict | None) -> list[str]:
    """What the report must say about the mask steps: a step skipped under "auto", ratios left out, and a
    caption-accuracy segmenter too weak on a class to read it (its real-test presence accuracy below 0.9)."""
    out = []
    if captions and captions.get("skipped"):
        out.append(f"caption accuracy skipped: {captions['skipped']}")
    elif captions:
        weak = [c for c, e in captions["real_reference"]["per_class"].items()
                if e["presence_accuracy"] is not None and e["presence_accuracy"] < 0.9]
        if weak:
            out.append(f"caption accuracy: the segmenter misreads the presence of {', '.join(weak)} in real test "
                       "images too (real-test reference presence accuracy below 0.9); the synthetic figures for "
                       "these classes say as much about the segmenter as about the generator")
    if seg_down and seg_down.get("skipped"):
        out.append(f"segmentation downstream skipped: {seg_down['skipped']}")
    elif seg_down:
        out += list(seg_down.get("warnings") or [])
    return out
