"""The end-to-end run: data -> train -> sample -> quick evaluation -> quick downstream -> report.

Each step is a function the CLI verbs call on their own too. A run folder::

    runs/<name>/
      config.yaml        resolved config (defaults <- preset <- file <- --set)
      run.json           synthmed/torch versions, seed, device, data fingerprints, timings
      data.json          what data was used: source, split policy, counts per class and split
      checkpoints/       resumable training state (atomic writes)
      generator/         the trained generator (checkpoint + generator.json)
      samples/           synthetic images: <class>/*.png, images.npz, manifest.csv, info.json, card.md/card.json
      metrics.json       conditional accuracy + downstream comparison (raw numbers)
      report.html        self-contained report

The run folder's bookkeeping lives in ``run_folder.py``; the steps for image-mask pairs and captions
(segmenter, caption accuracy, segmentation ratio sweep) in ``mask_steps.py``.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

from synthmed.config import RunConfig
from synthmed.data.dataset import DataError, DataSplits, ImageDataset
from synthmed.data.export import load_image_set, save_image_set
from synthmed.files import atomic_write_json
from synthmed.generators.base import Generator
from synthmed.generators.registry import build_generator, load_generator
# below these a number still gets computed, but the report says how little it means
from synthmed.report.verdict import MIN_TEST_PER_CLASS, MIN_TRAIN_PER_CLASS, run_verdict, run_warnings
from synthmed import distributed
from synthmed.pipeline.mask_steps import (check_mask_steps, mask_step_warnings, segmenter_key,  # noqa: F401
                                          step_caption_accuracy, step_segmentation_downstream, step_segmenter)
from synthmed.pipeline.run_folder import log as _log
from synthmed.pipeline.run_folder import prepare, run_dir  # noqa: F401
from synthmed.pipeline.run_folder import update_run_info as _update_run_info


def data_warnings(splits: DataSplits) -> list[str]:
    out = []
    for name, n in zip(splits.class_names, splits.train.class_counts()):
        if n < MIN_TRAIN_PER_CLASS:
            out.append(f"class '{name}' has only {n} training images: generators memorise small classes easily; "
                       "check samples against the training images")
    for name, n in zip(splits.class_names, splits.test.class_counts()):
        if n < MIN_TEST_PER_CLASS:
            out.append(f"class '{name}' has only {n} test images: its per-class accuracy has a wide confidence "
                       f"interval (one image = {1 / max(n, 1):.0%})")
    return out


# --------------------------------------------------------------------------- steps


def step_data(cfg: RunConfig, out: Path, *, download: bool = False, quiet: bool = False) -> DataSplits:
    from synthmed.data.sources import load_dataset

    t0 = time.time()
    splits = load_dataset(cfg.data, download=download)
    splits = place_splits(splits, cfg.data)
    splits = with_captions(cfg, splits)
    summary = splits.summary()
    if distributed.is_main():
        atomic_write_json(summary, out / "data.json")
    _update_run_info(out, data_fingerprints={s: summary[s]["fingerprint"] for s in ("train", "val", "test")},
                     timings={"data": time.time() - t0})
    _log(f"data: {splits.source} ({splits.split_policy}); train {len(splits.train)}, val {len(splits.val)}, "
         f"test {len(splits.test)}; classes {splits.class_names}", quiet)
    return splits


def with_captions(cfg: RunConfig, splits: DataSplits) -> DataSplits:
    """Under ``generator.context: caption`` every split with masks and no captions gets captions built from
    its masks by the ``captions:`` rules (renal-ldm); captions a CSV manifest gives are kept as they are."""
    if getattr(cfg.generator, "context", "none") != "caption":
        return splits
    from synthmed.data.captions import CaptionRules, add_captions

    parts = {}
    for name in ("train", "val", "test"):
        ds = getattr(splits, name)
        if ds.captions is None and ds.masks is not None and len(ds):
            ds = add_captions(ds, CaptionRules.from_config(cfg.captions, ds.mask_class_names))
        parts[name] = ds
    if parts["train"].captions is None:
        raise DataError(f"generator.context = caption: the training split of {splits.source} has neither captions nor "
                        "masks to build them from; give a csv: manifest a caption or mask_path column, or set "
                        "generator.context: none")
    return replace(splits, **parts)


def place_splits(splits: DataSplits, data_cfg) -> DataSplits:
    """The splits in memory, or in memory-mapped cache files read lazily (``data.storage``, chosen by
    ``data.in_memory_max_gb`` under "auto"); the same images, fingerprints and hashes either way."""
    from dataclasses import replace

    from synthmed.data.storage import choose_storage, split_bytes, to_disk, to_memory

    parts = (splits.train, splits.val, splits.test)
    total = sum(split_bytes(s) for s in parts)
    if choose_storage(total, data_cfg.storage, data_cfg.in_memory_max_gb) == "memory":
        mem = [to_memory(s) for s in parts]  # decoded to disk as a whole set, the splits left fit: into memory
        return splits if all(m is s for m, s in zip(mem, parts)) else replace(splits, train=mem[0], val=mem[1],
                                                                               test=mem[2])
    workers = data_cfg.loader_workers
    return replace(splits, train=to_disk(splits.train, loader_workers=workers),
                   val=to_disk(splits.val, loader_workers=workers), test=to_disk(splits.test, loader_workers=workers))


def learn_class_prototypes(cfg: RunConfig, train: ImageDataset, val: ImageDataset, device: str, *, seed: int,
                           quiet: bool = False):
    """`generator.conditioning: prototype` (`improve`): class prototypes learned on ``train``'s features
    from ``generator.prototypes.extractor`` ("domain": the judge's classifier, trained on ``train`` and
    early-stopped on ``val``, cached, so the run's judge is the same network). Returns the
    :class:`~synthmed.features.prototypes.Prototypes` and the provenance the generator records."""
    from synthmed.features import get_extractor
    from synthmed.features.domain import DomainExtractor
    from synthmed.features.prototypes import learn_prototypes

    pc = cfg.generator.prototypes
    t0 = time.time()
    if pc.extractor == "domain":
        extractor = DomainExtractor(train, val, cfg.evaluate.judge, cache_dir=None, seed=seed, device=device,
                                    progress=not quiet)
    else:
        extractor = get_extractor(pc.extractor, device=device)
    protos = learn_prototypes(extractor.extract(train), train.labels, train.num_classes, pc, seed=seed)
    described = extractor.describe()
    provenance = {"extractor": pc.extractor, "extractor_weights": described.get("weights_hash"),
                  "train_fingerprint": train.fingerprint(), **protos.describe(), "seconds_with_extractor": time.time() - t0}
    provenance.pop("loss_curve", None)
    _log(f"prototypes: {pc.per_class} per class on {protos.vectors.shape[2]}-d {pc.extractor} features of "
         f"{len(train)} real training images (gamma {pc.gamma:g}, lambda {pc.weight:g}); nearest-prototype accuracy "
         f"on them {protos.history['train_nearest_prototype_accuracy']:.3f}", quiet)
    return protos, provenance


def new_generator(cfg: RunConfig, train: ImageDataset, val: ImageDataset, device: str, *, seed: int,
                  quiet: bool = False) -> Generator:
    """An untrained generator of ``cfg.generator`` for ``train``; under prototype conditioning its frozen
    class vectors are learned first, on ``train`` only."""
    gcfg = cfg.generator
    protos = provenance = None
    if getattr(gcfg, "conditioning", "class") == "prototype":
        protos, provenance = learn_class_prototypes(cfg, train, val, device, seed=seed, quiet=quiet)
        gcfg = replace(gcfg, class_embed_dim=int(protos.vectors.shape[2]))
    gen = build_generator(gcfg, image_size=train.image_size, channels=train.channels, class_names=train.class_names,
                          device=device, seed=seed)
    if protos is not None:
        gen.set_class_vectors(protos.class_vectors(), provenance)
    if getattr(gcfg, "context", "none") == "caption":
        gen.set_caption_encoder(cfg.captions.encoder, cache=cfg.captions.cache)
    return gen


def step_train(cfg: RunConfig, out: Path, splits: DataSplits, device: str, *, resume: bool = True,
               quiet: bool = False) -> Generator:
    train = splits.train
    gen = new_generator(cfg, train, splits.val, device, seed=cfg.seed, quiet=quiet)
    budget = getattr(cfg.generator, "budget_minutes", None)
    described = gen.describe()
    if described.get("training_plan"):  # kinds that count training otherwise (GANs: kimg) say it themselves
        steps = described["training_plan"]
    else:
        steps = (f"up to {cfg.generator.train_steps} steps within {budget:g} min" if budget is not None
                 else f"{cfg.generator.train_steps} steps")
    _log(f"train: {described['summary']}, {gen.num_parameters:,} parameters, "
         f"{steps} of batch {cfg.generator.batch_size} on {device}", quiet)
    hist = gen.fit(train, splits.val, resume=resume, checkpoint_dir=out / "checkpoints", progress=not quiet)
    gen.save(out / "generator")
    _update_run_info(out, timings={"train": hist["train_seconds"]},
                     **({"training_budget": hist["budget"]} if hist.get("budget") else {}))
    if hist.get("budget") and hist["budget"].get("seconds_per_step"):
        b = hist["budget"]
        stopped = f", stopped at step {b['stopped_at_step']} when the time was up" if b.get("stopped_at_step") else ""
        length = (f"{b['chosen_kimg']:.4g} of {b['train_kimg_cap']:g} kimg" if b.get("chosen_kimg") is not None
                  else f"{b['chosen_steps']} of {b['train_steps_cap']} steps")
        _log(f"train: budget {b['budget_minutes']:g} min -> {length} "
             f"({b['seconds_per_step']:.3g} s/step measured over {b['measured_over_steps']} steps){stopped}", quiet)
    _log(f"train: done in {hist['train_seconds']:.0f} s ({hist['images_per_second']:.0f} images/s), "
         f"final loss {hist['loss_curve'][-1][1]:.4f}" if hist["loss_curve"] else "train: done", quiet)
    return gen


def sample_counts(cfg: RunConfig, train: ImageDataset) -> list[int]:
    if cfg.samples_per_class is None:
        return train.class_counts()
    return [int(cfg.samples_per_class)] * train.num_classes


def step_sample(cfg: RunConfig, out: Path, gen, counts: list[int], *, guidance: float | None = None,
                seed: int | None = None, folder: Path | None = None, quiet: bool = False,
                sampler: str | None = None, steps: int | None = None) -> ImageDataset:
    """``guidance``/``sampler``/``steps``: None = the generator's own settings."""
    # sampling seed differs from the training seed so sampling noise is not the training noise stream
    seed = cfg.seed + 1 if seed is None else seed
    syn = gen.sample(counts, guidance=guidance, seed=seed, sampler=sampler, steps=steps, progress=not quiet)
    folder = folder or out / "samples"
    if distributed.is_main():  # several processes sampled their chunks; every rank holds the whole set
        save_image_set(syn, folder)
    _update_run_info(out, timings={"sample": syn.meta["seconds"]})
    how = (f"{syn.meta['sampler']}, {syn.meta['steps']} steps, guidance {syn.meta['guidance']}"
           if syn.meta.get("guidance") is not None else f"{syn.meta['sampler']}, no guidance")
    _log(f"sample: {len(syn)} images ({how}) in {syn.meta['seconds']:.0f} s "
         f"({syn.meta['images_per_second']:.0f} images/s) -> {folder}", quiet)
    return syn


def step_judge(cfg: RunConfig, splits: DataSplits, device: str, *, quiet: bool = False):
    """The judge: a classifier trained on the REAL training split (early-stopped on real val).

    It scores conditional accuracy and, as the "domain" feature extractor, supplies the features
    of the realism filter, the distribution metrics and the memorisation audit. Cached by data
    fingerprint + config, so a rerun or `synthmed evaluate` reuses it.
    """
    from synthmed.features.domain import DomainExtractor

    t0 = time.time()
    extractor = DomainExtractor(splits.train, splits.val, cfg.evaluate.judge, cache_dir=None, seed=cfg.seed,
                                device=device, progress=not quiet)
    _log(f"judge: {cfg.evaluate.judge.arch} trained on the real training split "
         f"({'from cache' if extractor.cache_hit else f'{time.time() - t0:.0f} s'})", quiet)
    return extractor


def grader_config(cfg: RunConfig):
    """(classifier config, seed) of the independent grader: the judge's settings with
    ``evaluate.grader_arch`` (None: the judge's architecture), seed ``seed + evaluate.grader_seed_offset``."""
    from dataclasses import replace

    ev = cfg.evaluate
    arch = ev.grader_arch or ev.judge.arch
    # ImageNet weights are a ResNet-18 file: a small-CNN grader starts from scratch
    weights = ev.judge.weights_path if arch == "resnet18" else None
    return replace(ev.judge, arch=arch, weights_path=weights), cfg.seed + ev.grader_seed_offset


def step_grader(cfg: RunConfig, splits: DataSplits, device: str, *, quiet: bool = False):
    """The independent grader: a second classifier trained on the same REAL training split with
    another seed (and, with ``evaluate.grader_arch``, another architecture). It scores conditional
    accuracy when the judge selected the images (``select.mode: confidence``): a classifier that chose
    images for its own confidence would grade its own choice. Cached like the judge."""
    from synthmed.features.domain import DomainExtractor

    t0 = time.time()
    gcfg, seed = grader_config(cfg)
    grader = DomainExtractor(splits.train, splits.val, gcfg, cache_dir=None, seed=seed, device=device,
                             progress=not quiet)
    _log(f"grader: {gcfg.arch} seed {seed} trained on the real training split, independent of the selecting judge "
         f"({'from cache' if grader.cache_hit else f'{time.time() - t0:.0f} s'})", quiet)
    return grader


def _scorer_of_conditional_accuracy(synthetic: ImageDataset, judge, grader) -> tuple[object, dict]:
    """The classifier that scores conditional accuracy, and the record of which one it is.

    A set selected by a classifier's confidence (``meta["selection"]["mode"] == "confidence"``) is never
    scored by that classifier: it needs ``grader``, whose weights must differ from the selector's."""
    from synthmed.config import ConfigError
    from synthmed.features.base import state_dict_sha256

    selection = synthetic.meta.get("selection") if isinstance(synthetic.meta.get("selection"), dict) else {}
    selector = selection.get("selector") if selection.get("mode") == "confidence" else None
    if selector is not None and grader is None:
        raise ConfigError(f"{synthetic.name}: these images were kept for a classifier's confidence "
                          f"({selector.get('arch')} seed {selector.get('seed')}); their conditional accuracy must be "
                          "scored by an independent grader, not by that judge (pipeline.step_grader)")
    scorer = grader if grader is not None else judge
    clf = scorer.classifier
    weights = getattr(scorer, "weights_hash", None) or state_dict_sha256(clf.model.state_dict())
    record = {"role": "independent grader" if grader is not None else "judge", "arch": clf.config.arch,
              "seed": clf.meta.get("seed"), "weights_hash": weights, "trained_on": clf.train_fingerprint,
              "selector": selector}
    if selector is not None:
        if weights == selector.get("weights_hash"):
            raise ConfigError(f"the grader ({clf.config.arch} seed {clf.meta.get('seed')}) has the same weights as the "
                              f"classifier that selected {synthetic.name}; it cannot grade its own choice: change "
                              "evaluate.grader_seed_offset or evaluate.grader_arch")
        record["independent_of_selector"] = True
    return scorer, record


def step_reconstruction(out: Path, gen, splits: DataSplits, judge, *, quiet: bool = False) -> dict | None:
    """Latent generators: the judge's accuracy on real validation images next to its accuracy on
    their autoencoder reconstructions (:mod:`synthmed.metrics.reconstruction`), recorded in the
    generator's history (``autoencoder.reconstruction_judge``) and saved with it. None when the
    generator has no autoencoder or there is no validation split."""
    from synthmed.metrics.reconstruction import reconstruction_judge_accuracy, reconstruction_warning

    if len(splits.val) == 0:
        return None
    rec = gen.reconstruct(splits.val)
    if rec is None:
        return None
    res = reconstruction_judge_accuracy(judge.classifier, splits.val, rec)
    res["split"] = "val"
    ae = gen.history.setdefault("autoencoder", {})
    if isinstance(ae, dict):
        ae["reconstruction_judge"] = res
        gen.save(out / "generator")
    _log(f"autoencoder: judge accuracy {res['accuracy_reconstructed']:.3f} on reconstructions of {res['n']} real "
         f"validation images vs {res['accuracy_original']:.3f} on the originals ({-100 * res['drop'] + 0.0:+.1f} points)",
         quiet)
    warning = reconstruction_warning(res)
    if warning:
        _log(f"warning: {warning}", quiet)
    return res


def feature_extractor(cfg: RunConfig, judge, device: str):
    """The extractor named by ``evaluate.extractor``; "domain" is the judge itself."""
    from synthmed.features import get_extractor

    name = cfg.evaluate.extractor
    if name == "domain":
        return judge
    return get_extractor(name, device=device)


def step_choose_guidance(cfg: RunConfig, out: Path, gen, splits: DataSplits, judge, *,
                         quiet: bool = False) -> dict | None:
    """The guidance scale among ``generator.guidance_candidates`` with the highest conditional accuracy
    x coverage on the REAL VALIDATION split (synthmed.metrics.guidance); None when no candidates are
    set. The test split is never used: its fingerprint is passed only so that the choice refuses it."""
    from synthmed.metrics.guidance import accuracy_times_coverage, choose_guidance

    g = cfg.generator
    candidates = getattr(g, "guidance_candidates", None)
    if not candidates:
        if chosen_guidance(out) is not None:  # a rerun without candidates: an earlier choice no longer holds
            _update_run_info(out, guidance_selection=None)
        return None
    result = choose_guidance(gen, splits.val, candidates, score=accuracy_times_coverage(judge, k=cfg.evaluate.k),
                             per_class=g.guidance_samples_per_class, seed=cfg.seed + 2,
                             forbidden={"test": splits.test.fingerprint(), "training": splits.train.fingerprint()},
                             progress=not quiet)
    _update_run_info(out, guidance_selection={k: result[k] for k in ("chosen", "criterion", "samples_per_class",
                                                                     "real_split", "real_fingerprint")},
                     timings={"choose_guidance": result["seconds"]})
    table = ", ".join(f"{r['guidance']:g}: {r['score']:.3f}" for r in result["candidates"])
    _log(f"guidance: {result['chosen']:g} chosen on the real validation split ({len(splits.val)} images; "
         f"accuracy x coverage per scale {table}; {result['seconds']:.0f} s)", quiet)
    for w in _guidance_warnings(result):
        warnings.warn(w)
    return result


def chosen_guidance(out: Path) -> float | None:
    """The guidance scale a run chose on its validation split (run.json), None when it chose none."""
    path = Path(out) / "run.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    return (info.get("guidance_selection") or {}).get("chosen")


def step_select(cfg: RunConfig, out: Path, gen, splits: DataSplits, extractor, counts: list[int], *,
                seed: int | None = None, judge=None, quiet: bool = False,
                guidance: float | None = None) -> tuple[ImageDataset, dict]:
    """Generate until ``counts`` images per class pass the filter of ``select.mode`` (or the budget is
    spent): the realism filter in ``extractor``'s features, or (``confidence``) ``judge``'s confidence.
    ``guidance``: the scale chosen on validation data (None: the generator's own)."""
    from synthmed.selection.confidence import generate_until_confident
    from synthmed.selection.filter import generate_until

    sel = cfg.select
    t0 = time.time()
    seed = cfg.seed + 1 if seed is None else seed
    # held_out: the real validation images under the same filter, what a perfect generator would get
    if sel.mode == "confidence":
        if judge is None:
            raise ValueError("select.mode confidence needs the judge (step_judge) that selects")
        kept, report = generate_until_confident(gen, judge.classifier, counts, tau=sel.tau,
                                                budget_factor=sel.budget_factor, seed=seed, held_out=splits.val,
                                                progress=not quiet, guidance=guidance)
        rule = f"the judge's confidence filter (p(intended class) >= {sel.tau:g})"
    else:
        kept, report = generate_until(gen, splits.train, extractor, counts, mode=sel.mode, threshold=sel.threshold,
                                      k=sel.k, budget_factor=sel.budget_factor, seed=seed, held_out=splits.val,
                                      progress=not quiet, guidance=guidance)
        rule = f"the {sel.mode} realism filter (R >= {sel.threshold})"
    # the selection record generate_until* wrote (settings, seed, the selector) is kept as it is
    kept.meta.update({"generator": gen.kind, **gen.sampling_defaults,
                      **({"guidance": guidance} if guidance is not None else {}),
                      "train_fingerprint": gen.train_fingerprint, "seconds": time.time() - t0,
                      "images_per_second": report.get("generated", len(kept)) / max(time.time() - t0, 1e-9)})
    save_image_set(kept, out / "samples")
    _update_run_info(out, timings={"sample+select": time.time() - t0})
    _log(f"select: kept {len(kept)} images passing {rule}", quiet)
    return kept, report


def evaluate_synthetic(splits: DataSplits, synthetic: ImageDataset, ev_cfg, judge, extractor, out_dir: Path, *,
                       seed: int = 0, grader=None, quiet: bool = False) -> dict:
    """Conditional accuracy (judge, or ``grader``: required for a set the judge selected by its
    confidence), distribution metrics per class with subsampling CIs against the real
    ``ev_cfg.real_split`` in ``extractor``'s features, and the memorisation audit against the real
    training split. Writes ``out_dir/evaluation/{metrics.json,metrics.csv}`` and the audit's worst pairs."""
    from synthmed.metrics.conditional_accuracy import conditional_accuracy
    from synthmed.metrics.diversity import class_diversity, diversity_warning
    from synthmed.metrics.evaluate import evaluate, format_table, write_outputs
    from synthmed.metrics.memorisation import memorisation_audit, worst_pairs_grid
    from synthmed.report.figures import save_png

    if len(synthetic) == 0:
        from synthmed.data.dataset import DataError

        raise DataError(f"{synthetic.name}: the synthetic set holds no images (a realism filter that kept none?); "
                        "generate more (synthmed sample --per-class N) or loosen the filter (--threshold)")
    t0 = time.time()
    stages: dict[str, float] = {}
    scorer, scored_by = _scorer_of_conditional_accuracy(synthetic, judge, grader)
    result = {"conditional_accuracy": {**conditional_accuracy(scorer.classifier, synthetic, splits.test),
                                       "scored_by": scored_by}}
    stages["conditional_accuracy"] = time.time() - t0
    ca = result["conditional_accuracy"]
    who = (f"independent grader {scored_by['arch']} seed {scored_by['seed']}" if grader is not None else "judge")
    _log(f"evaluate: conditional accuracy {ca['accuracy']['accuracy']:.3f} by the {who} (chance {ca['chance']:.3f}; "
         f"its accuracy on real test images {ca['real_test']['accuracy']:.3f})", quiet)
    real = getattr(splits, ev_cfg.real_split)
    ev = evaluate(real, synthetic, extractor, metrics=tuple(ev_cfg.metrics), n_boot=ev_cfg.n_boot, k=ev_cfg.k,
                  seed=seed, lpips=ev_cfg.lpips, lpips_weights_dir=ev_cfg.lpips_weights_dir,
                  real_train_fingerprint=splits.train.fingerprint())
    stages["distribution_metrics"] = time.time() - t0 - sum(stages.values())
    write_outputs(ev, out_dir / "evaluation")
    result["evaluation"] = ev
    if not quiet:
        print(format_table(ev), flush=True)
    result["diversity"] = class_diversity(extractor.extract(real), real.labels, extractor.extract(synthetic),
                                          synthetic.labels, real.class_names, k=ev_cfg.k, seed=seed)
    stages["diversity"] = time.time() - t0 - sum(stages.values())
    collapse = diversity_warning(result["diversity"])
    if collapse:
        warnings.warn(collapse)
    if ev_cfg.memorisation:
        audit = memorisation_audit(splits.train, synthetic, extractor)
        result["memorisation"] = audit
        save_png(worst_pairs_grid(audit, splits.train, synthetic), out_dir / "evaluation" / "memorisation_worst_pairs.png")
        o = audit["overall"]
        stages["memorisation"] = time.time() - t0 - sum(stages.values())
        _log(f"memorisation: {o['n_flagged']} of {o['n']} synthetic images flagged as near-copies of training "
             f"images ({len(splits.train)} training images, {stages['memorisation']:.0f} s)", quiet)
    result["seconds"] = time.time() - t0
    result["stage_seconds"] = stages
    return result


def step_evaluate(cfg: RunConfig, out: Path, splits: DataSplits, synthetic: ImageDataset, judge, extractor,
                  *, grader=None, quiet: bool = False) -> dict:
    result = evaluate_synthetic(splits, synthetic, cfg.evaluate, judge, extractor, out, seed=cfg.seed, grader=grader,
                                quiet=quiet)
    _update_run_info(out, timings={"evaluate": result["seconds"]})
    if (out / "samples" / "images.npz").is_file():  # the set step_sample / step_select wrote
        record_evaluation_in_card(out / "samples", synthetic, result)
    return result


def record_evaluation_in_card(folder: Path | None, synthetic: ImageDataset, result: dict) -> Path | None:
    """Add the evaluation summary and memorisation result of ``result`` (:func:`evaluate_synthetic`)
    to the data card of the set in ``folder``; returns the card.md path (None without a folder)."""
    from synthmed.data.card import CARD_MD, describe_set, update_data_card
    from synthmed.metrics.evaluate import card_summaries

    if folder is None:
        return None
    evaluation, memorisation = card_summaries(result, synthetic.fingerprint())
    update_data_card(folder, evaluation_summary=evaluation, memorisation=memorisation,
                     set_info=describe_set(synthetic), meta=synthetic.meta)
    return Path(folder) / CARD_MD


def step_downstream(cfg: RunConfig, out: Path, splits: DataSplits, synthetic: ImageDataset, device: str,
                    generator_fingerprint: str | None, *, quiet: bool = False) -> dict:
    from synthmed.downstream.quick import real_vs_augmented

    t0 = time.time()
    res = real_vs_augmented(splits, synthetic, cfg.downstream, device=device,
                            generator_fingerprint=generator_fingerprint, progress=not quiet)
    res["seconds"] = time.time() - t0
    _update_run_info(out, timings={"downstream": res["seconds"]})
    d = res["difference"]["balanced_accuracy"]
    _log(f"downstream: balanced accuracy real {res['summary']['real']['balanced_accuracy']['mean']:.3f} vs "
         f"real+synthetic {res['summary']['augmented']['balanced_accuracy']['mean']:.3f} "
         f"(paired difference {d['mean']:+.3f} over {len(res['seeds'])} seeds)", quiet)
    return res


def synthetic_pool_sizes(cfg: RunConfig, train: ImageDataset) -> list[int]:
    """Synthetic images per class the experiment's most demanding protocol needs."""
    import math

    from synthmed.downstream.protocols import RATIO_SCALED, expand_protocols

    d = cfg.downstream
    counts = train.class_counts()
    protocols = expand_protocols(list(d.protocols))
    need = [0] * len(counts)
    for c, n in enumerate(counts):
        if any(p in RATIO_SCALED for p in protocols):
            need[c] = max(need[c], math.ceil(d.synthetic_ratio * n))
        if "balance" in protocols:
            need[c] = max(need[c], max(counts) - n)
        for p in protocols:
            if p.startswith("ratio-"):
                need[c] = max(need[c], math.ceil(int(p.split(":")[1]) / 100 * n))
    return [math.ceil(x * d.oversample) for x in need]


def downstream_repeats(cfg: RunConfig, train: ImageDataset) -> list[tuple[str, ImageDataset, int]]:
    """(id, real training subset, seed) per repeat: k non-overlapping subsets, or seeds on all of train."""
    from synthmed.data.splits import disjoint_subsets

    d = cfg.downstream
    if d.subsets > 0:
        subsets = disjoint_subsets(train, d.subsets, n_per_class=d.subset_per_class, fraction=d.subset_fraction,
                                   seed=cfg.seed)
        return [(f"subset{i}", sub, d.seeds[i % len(d.seeds)]) for i, sub in enumerate(subsets)]
    return [(f"seed{s}", train, s) for s in d.seeds]


def step_downstream_experiment(cfg: RunConfig, out: Path, splits: DataSplits, device: str, *,
                               repeats: list | None = None, exp_dir: Path | None = None,
                               quiet: bool = False) -> dict:
    """`synthmed downstream`: every protocol x filter over k subsets (or seeds), a generator trained
    per subset on that subset only (unless ``downstream.reuse_generator``); resumable."""
    from synthmed.downstream.experiment import format_results_table, run_experiment

    d = cfg.downstream
    repeats = repeats if repeats is not None else downstream_repeats(cfg, splits.train)
    exp_dir = exp_dir or out / "downstream"
    shared: dict = {}

    def synthetic_for(subset: ImageDataset, i: int):
        source = splits.train if d.reuse_generator else subset
        key = "shared" if d.reuse_generator else f"repeat{i}"
        if key not in shared:
            folder = exp_dir / "generators" / key
            gen = new_generator(cfg, source, splits.val, device, seed=cfg.seed + i, quiet=quiet)
            _log(f"downstream: training the generator for {key} on {len(source)} real images", quiet)
            gen.fit(source, splits.val, checkpoint_dir=folder, progress=not quiet)
            gen.save(folder)
            shared[key] = gen
        gen = shared[key]
        pool = gen.sample(synthetic_pool_sizes(cfg, subset), seed=cfg.seed + 1 + i, progress=not quiet)
        return pool, gen.train_fingerprint

    t0 = time.time()
    result = run_experiment(splits, protocols=d.protocols, synthetic_for=synthetic_for, repeats=repeats, cfg=d,
                            filters=d.filters, out_dir=exp_dir, device=device, progress=not quiet,
                            reuse_generator=d.reuse_generator, tau=cfg.select.tau)
    _update_run_info(out, timings={"downstream_experiment": time.time() - t0})
    if result.get("partial"):  # one task of a job array: the other tasks' cells are not all written yet
        _log(f"downstream: shard {result['shard']} done; {result['cells_done']} cells written, "
             f"{result['cells_missing']} still to come from the other tasks (rerun without downstream.shard "
             "to assemble)", quiet)
        return result
    if not quiet:
        print(format_results_table(result["summary"]), flush=True)
    return result


def resolve_synthetic(source: str | Path) -> ImageDataset:
    """A synthetic image set from a folder written by `synthmed sample` (images.npz), a run folder
    (its samples/), or a ``folder:``/``csv:`` dataset of generated images (flagged synthetic);
    refused when it holds no images (nothing to score)."""
    from synthmed.data.dataset import DataError

    ds = _read_synthetic(source)
    if len(ds) == 0:
        raise DataError(f"{source}: the synthetic set holds no images (a realism filter that kept none?); "
                        "generate more (synthmed sample --per-class N) or loosen the filter (--threshold)")
    return ds


def _read_synthetic(source: str | Path) -> ImageDataset:
    """A synthetic image set from a folder written by `synthmed sample` (images.npz), a run folder
    (its samples/), or a ``folder:``/``csv:`` dataset of generated images (flagged synthetic)."""
    from synthmed.data.dataset import DataError

    source = str(source)
    if source.startswith(("folder:", "csv:")):
        from synthmed.data.sources import load_csv, load_folder

        kind, path = source.split(":", 1)
        ds = load_folder(path) if kind == "folder" else load_csv(path)
        ds.synthetic, ds.name = True, Path(path).name
        return ds
    p = Path(source)
    if (p / "samples" / "images.npz").is_file():
        p = p / "samples"
    if (p / "images.npz").is_file() or p.suffix == ".npz":
        return load_image_set(p)
    raise DataError(f"{source}: no synthetic image set there; pass a folder written by `synthmed sample` "
                    "(holding images.npz), a run folder, or folder:PATH / csv:FILE")


def synthetic_set_folder(source: str | Path) -> Path | None:
    """The folder holding the ``images.npz`` (and data card) that :func:`resolve_synthetic` reads for
    ``source``; None for ``folder:``/``csv:`` images, which synthmed did not write."""
    source = str(source)
    if source.startswith(("folder:", "csv:")):
        return None
    p = Path(source)
    if (p / "samples" / "images.npz").is_file():
        return p / "samples"
    if (p / "images.npz").is_file():
        return p
    return p.parent if p.suffix == ".npz" and p.is_file() else None


def real_config(source: str, *, data_root: str | None = None, overrides: dict | None = None) -> RunConfig:
    """The validated config of a real-data source: a run folder's config.yaml, or the defaults with
    ``data.dataset = source`` (embryo, folder:PATH, csv:FILE, medmnist:FLAG); ``overrides`` (nested,
    as from --set) on top. Checked before any image is read."""
    from synthmed.config import load_config, merge

    from synthmed.features.registry import check_extractor_name

    p = Path(source)
    if (p / "config.yaml").is_file():
        cfg = load_config(p / "config.yaml", overrides=overrides)
    else:
        cfg = load_config(overrides=merge({"data": {"dataset": source, "data_root": data_root}}, overrides or {}))
    check_extractor_name(cfg.evaluate.extractor)
    return cfg


def resolve_real(source: str, *, image_size: int | None = None, channels: int | None = None,
                 data_root: str | None = None, download: bool = False, overrides: dict | None = None,
                 cfg: RunConfig | None = None) -> tuple[RunConfig, DataSplits]:
    """Real splits from a run folder (the data its config names) or a dataset spec
    (embryo, folder:PATH, csv:FILE, medmnist:FLAG), brought to ``image_size``/``channels``.
    ``cfg``: the source's config from :func:`real_config`, when the caller already has it."""
    from dataclasses import replace

    from synthmed.config import validate
    from synthmed.data.sources import load_dataset

    cfg = cfg or real_config(source, data_root=data_root, overrides=overrides)
    changes = {k: v for k, v in (("image_size", image_size), ("channels", channels)) if v}
    if changes:  # a new config, checked again (only the real data is loaded: no generator to fit)
        cfg = replace(cfg, data=replace(cfg.data, **changes))
        validate(cfg, for_training=False)
    return cfg, load_dataset(cfg.data, download=download)


# --------------------------------------------------------------------------- report


def report_view(cfg_dict: dict, run_info: dict, data: dict, metrics: dict) -> dict:
    """Shape the raw run outputs into the sections the HTML report renders."""
    view: dict = {
        "title": f"synthmed run '{cfg_dict.get('name')}'",
        "run_name": cfg_dict.get("name"),
        "synthmed_version": run_info.get("synthmed_version"),
        "device": f"{run_info.get('device')} ({run_info.get('threads')} threads, torch {run_info.get('torch_version')})",
        "seeds": {"run": cfg_dict.get("seed"), "downstream": cfg_dict.get("downstream", {}).get("seeds")},
        "data": data,
        "config": cfg_dict,
        "timings": run_info.get("timings", {}),
        "warnings": list(metrics.get("warnings", [])),
    }
    # recomputed from the numbers, so `synthmed report` on an older run folder also leads with them
    view["verdict"] = run_verdict(metrics, data)
    view["warnings"] += [w for w in run_warnings(metrics, data) if w not in view["warnings"]]
    g = metrics.get("generator")
    if g:
        view["generator"] = {
            # runs before the generator registry recorded no summary: they were all diffusion
            "kind": g.get("summary") or "class-conditional diffusion (diffusers UNet2DModel)", "space": g.get("space"),
            "num_parameters": g.get("num_parameters"), "train_steps": g.get("train_steps"),
            "train_seconds": g.get("train_seconds"), "images_per_second": g.get("images_per_second"),
            "loss_curve": g.get("loss_curve"), "train_fingerprint": g.get("train_fingerprint"),
            "autoencoder": g.get("autoencoder"), "config": cfg_dict.get("generator"),
            **({"latent_shape": g["latent_shape"], "autoencoder_factor": g.get("autoencoder_factor")}
               if g.get("latent_shape") else {}),
            "budget": g.get("budget"), "estimate": g.get("estimate"),
            # GAN kinds: progress in kimg, the FD curve with its best snapshot, truncation
            **{k: g[k] for k in ("adversarial", "train_kimg", "fd_curve", "fd_reference", "sampling_network",
                                 "truncation") if g.get(k) is not None},
        }
    s = metrics.get("sampling")
    if s:
        view["sampling"] = s
        if metrics.get("guidance_selection"):  # shown in the sampling section
            view["sampling"] = {**s, "guidance_selection": metrics["guidance_selection"]}
    ca = metrics.get("conditional_accuracy")
    if ca:
        judge = ca["judge"]
        real = ca.get("real_test") or {}
        view["conditional_accuracy"] = {
            "judge": {
                "arch": judge["arch"], "trained_on": "real training split", "train_fingerprint": judge["trained_on_fingerprint"],
                "num_train_images": judge["n_train"], "real_test_accuracy": real.get("accuracy"),
                "real_test_accuracy_per_class": {c: e.get("real_accuracy") for c, e in ca["per_class"].items()},
            },
            "overall": ca["accuracy"]["accuracy"],
            "per_class": {c: {"accuracy": e["accuracy"], "n": e["n"]} for c, e in ca["per_class"].items()},
            "chance": ca["chance"],
            **({"scored_by": ca["scored_by"]} if ca.get("scored_by") else {}),
        }
    for key in ("selection", "evaluation", "diversity", "memorisation", "caption_accuracy", "segmentation_downstream"):
        if metrics.get(key):
            view[key] = metrics[key]
    d = metrics.get("downstream")
    if d:
        arm_names = {"real": "real only", "augmented": "real + synthetic"}
        view["downstream"] = {
            "classifier": d["classifier"], "seeds": d["seeds"], "n_test": d["n_test"],
            "test_split": "real test split", "std": d["std"],
            "arms": {arm_names[a]: {"composition": d["composition"][a], "metrics": d["summary"][a]}
                     for a in ("real", "augmented")},
            "paired_difference": d["difference"],
            **{k: d[k] for k in ("per_class", "confusion_matrix") if k in d},
        }
    return view


def step_report(out: Path, splits: DataSplits | None = None, synthetic: ImageDataset | None = None,
                *, quiet: bool = False) -> Path:
    """(Re)render report.html from the files in a run folder."""
    import yaml

    from synthmed.report.html import write_report

    cfg_dict = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
    run_info = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    data = json.loads((out / "data.json").read_text()) if (out / "data.json").is_file() else {}
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    if synthetic is None and (out / "samples" / "images.npz").is_file():
        synthetic = load_image_set(out / "samples")
    view = report_view(cfg_dict, run_info, data, metrics)
    if (out / "downstream" / "results.json").is_file():
        view["downstream_experiment"] = json.loads((out / "downstream" / "results.json").read_text())
    grids = {}
    worst = out / "evaluation" / "memorisation_worst_pairs.png"
    if worst.is_file():
        import numpy as np
        from PIL import Image

        pairs = np.asarray(Image.open(worst))
        scale = max(1, 256 // max(pairs.shape[1], 1))  # small images: enlarge so a reader can compare them
        pairs = pairs.repeat(scale, axis=0).repeat(scale, axis=1)
        if isinstance(view.get("memorisation"), dict):  # shown in the audit's own section
            view["memorisation"] = {**view["memorisation"], "worst_pairs_grid": pairs}
        else:
            grids["Memorisation audit: the synthetic images closest to a training image (left) and that "
                  "training image (right)"] = pairs
    path = write_report(out / "report.html", view, real=splits.train if splits is not None else None,
                        synthetic=synthetic, extra_grids=grids or None)
    _log(f"report: {path.resolve()}", quiet)
    return path


# --------------------------------------------------------------------------- whole run


def run(cfg: RunConfig, *, resume: bool = True, download: bool = False, quiet: bool = False) -> Path:
    t_start = time.time()
    out, device = prepare(cfg)
    _log(f"run '{cfg.name}' -> {out.resolve()} (device {device})", quiet)
    splits = step_data(cfg, out, download=download, quiet=quiet)
    check_mask_steps(cfg, splits)  # a mask step switched on without real masks stops before training
    gen = step_train(cfg, out, splits, device, resume=resume, quiet=quiet)
    if distributed.world().active:
        # several processes trained the generator; rank 0 goes on alone (evaluation, downstream, report)
        main = distributed.is_main()
        distributed.shutdown()
        if not main:
            return out
    judge = step_judge(cfg, splits, device, quiet=quiet)
    step_reconstruction(out, gen, splits, judge, quiet=quiet)
    extractor = feature_extractor(cfg, judge, device)
    guidance = step_choose_guidance(cfg, out, gen, splits, judge, quiet=quiet)
    chosen = guidance["chosen"] if guidance else None
    counts = sample_counts(cfg, splits.train)
    selection = None
    if cfg.select.mode == "none":
        synthetic = step_sample(cfg, out, gen, counts, quiet=quiet, guidance=chosen)
    else:
        synthetic, selection = step_select(cfg, out, gen, splits, extractor, counts, judge=judge, quiet=quiet,
                                           guidance=chosen)
        if len(synthetic) == 0:
            from synthmed.generators.base import GeneratorError

            what, knob = ((f"confidence filter (tau {cfg.select.tau})", "select.tau") if cfg.select.mode == "confidence"
                          else (f"{cfg.select.mode} realism filter (threshold {cfg.select.threshold})",
                                "select.threshold"))
            raise GeneratorError(f"the {what} kept no synthetic image; lower {knob}, raise select.budget_factor, or "
                                 "train the generator longer (generator.train_steps)")
    # the judge selected these images: an independent grader scores their conditional accuracy
    grader = step_grader(cfg, splits, device, quiet=quiet) if cfg.select.mode == "confidence" else None
    evaluation = step_evaluate(cfg, out, splits, synthetic, judge, extractor, grader=grader, quiet=quiet)
    down = step_downstream(cfg, out, splits, synthetic, device, gen.train_fingerprint, quiet=quiet)
    captions = step_caption_accuracy(cfg, out, splits, synthetic, device, quiet=quiet)
    seg_down = step_segmentation_downstream(cfg, out, splits, synthetic, device, quiet=quiet)
    h = gen.history
    metrics = {
        "generator": {
            **gen.describe(), "space": getattr(cfg.generator, "space", None), "loss_curve": h["loss_curve"],
            "precision": h.get("precision"), "frozen_parameters": h.get("frozen_parameters", []),
            "autoencoder": h.get("autoencoder"), "budget": h.get("budget"), "estimate": h.get("estimate"),
        },
        **({"guidance_selection": guidance} if guidance else {}),
        "sampling": {
            "sampler": synthetic.meta["sampler"], "steps": synthetic.meta["steps"], "guidance": synthetic.meta["guidance"],
            "num_per_class": dict(zip(synthetic.class_names, synthetic.class_counts())),
            "seconds": synthetic.meta["seconds"], "images_per_second": synthetic.meta["images_per_second"],
        },
        **({"selection": selection} if selection else {}),
        **{k: v for k, v in evaluation.items() if k != "seconds"},
        "downstream": down,
        **({"caption_accuracy": captions} if captions else {}),
        **({"segmentation_downstream": seg_down} if seg_down else {}),
        "warnings": data_warnings(splits) + _generator_warnings(h) + _guidance_warnings(guidance)
        + _evaluation_warnings(evaluation) + mask_step_warnings(captions, seg_down),
    }
    _add_findings(metrics, json.loads((out / "data.json").read_text()))
    atomic_write_json(metrics, out / "metrics.json")
    _update_run_info(out, timings={"total": time.time() - t_start})
    step_report(out, splits, synthetic, quiet=quiet)
    _log(f"done in {time.time() - t_start:.0f} s", quiet)
    return out


def _add_findings(metrics: dict, data: dict) -> dict:
    """The verdict and the warnings read off the run's numbers (synthmed.report.verdict), into metrics.json."""
    metrics["warnings"] += [w for w in run_warnings(metrics, data) if w not in metrics["warnings"]]
    metrics["verdict"] = run_verdict(metrics, data)
    return metrics


def _evaluation_warnings(evaluation: dict) -> list[str]:
    audit = evaluation.get("memorisation")
    if audit and audit["overall"]["n_flagged"]:
        o = audit["overall"]
        return [f"memorisation audit: {o['n_flagged']} of {o['n']} synthetic images are near-copies of training "
                "images (see the memorisation section)"]
    return []


def _guidance_warnings(selection: dict | None) -> list[str]:
    if selection and selection.get("at_edge"):
        scales = [r["guidance"] for r in selection["candidates"]]
        return [f"guidance {selection['chosen']:g} scored best on the validation split but is the end of the range "
                f"tried ({min(scales):g}-{max(scales):g}): a scale beyond it may score higher; widen "
                "generator.guidance_candidates"]
    return []


def _generator_warnings(history: dict) -> list[str]:
    frozen = history.get("frozen_parameters") or []
    if frozen:
        return [f"{len(frozen)} generator parameter tensors never changed during training (e.g. {frozen[:2]})"]
    return []


def load_run_generator(out: Path, device: str = "cpu"):
    return load_generator(out / "generator", device=device)


__all__ = ["run", "prepare", "step_data", "step_train", "step_judge", "step_grader", "step_reconstruction",
           "step_choose_guidance", "chosen_guidance", "step_sample", "step_select", "step_evaluate",
           "step_downstream", "step_segmenter", "step_caption_accuracy", "step_segmentation_downstream", "step_report",
           "report_view", "load_run_generator"]
