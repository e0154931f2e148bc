"""`synthmed compare`: generator families on the same data at equal wall time.

Each family (a generator kind with its preset's settings) trains on the same real training split
for the same ``minutes`` (its ``generator.budget_minutes``: diffusion's step count, or a GAN's kimg
with every schedule and growing phase scaled alike, is set from the speed measured over the first
steps; the planned length is set far beyond what fits, so the budget, not the plan, ends every
run). Then every family is scored alike: conditional accuracy by the judge (a classifier trained on
the real training split), FD in the judge's features against the real test split next to the
real floor (real validation images at the synthetic set's class counts: what a generator
indistinguishable from real data would score at that N), precision / recall / coverage, the
mode-collapse guard, sampling speed, and optionally the downstream real vs real + synthetic
classifier over ``downstream.seeds`` with its paired interval.

Writes ``OUT/comparison.json``, ``OUT/comparison.md``, ``OUT/report.html`` (one section) and per
family a run folder ``OUT/<family>/`` (generator, checkpoints, samples). Resumable: a family whose
saved generator matches the training split and settings is not trained again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from synthmed.config import ConfigError, RunConfig, load_config, to_dict, validate
from synthmed.data.dataset import DataSplits
from synthmed.files import atomic_write_json, atomic_write_text, json_default
from synthmed.pipeline import (feature_extractor, prepare, sample_counts, step_choose_guidance, step_data,
                               step_downstream, step_judge, step_train)
from synthmed.report.compare_section import COLUMNS, describe, table_cells

#: the preset a family gets when the run's own generator is of another kind
DEFAULT_PRESETS = {"diffusion": "pixel28", "r3gan": "r3gan28", "progan": "progan28"}
#: planned lengths far beyond what a budget fits, so every family trains for the whole budget
GAN_CAP_KIMG = 2000.0
DIFFUSION_CAP_STEPS = 10**6



def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[synthmed] {msg}", flush=True)


def family_generator_config(cfg: RunConfig, kind: str, preset: str | None = None, overrides: dict | None = None):
    """The generator settings of one family: ``preset``'s generator section (default: the run's own
    generator when it is of this kind, else :data:`DEFAULT_PRESETS`), with ``overrides`` on top."""
    if preset is None and cfg.generator.kind == kind and not overrides:
        return cfg.generator
    if preset is None and cfg.generator.kind == kind:
        values = {**to_dict(cfg), "generator": {**to_dict(cfg.generator), **overrides}}
        return load_config(overrides=values).generator
    preset = preset or DEFAULT_PRESETS.get(kind)
    if preset is None:
        raise ConfigError(f"compare: no default preset for generator kind '{kind}'; name one with "
                          f"--presets {kind}=PRESET")
    g = load_config(preset=preset).generator
    if g.kind != kind:
        raise ConfigError(f"compare: preset '{preset}' is a {g.kind} generator, not {kind}")
    if overrides:
        g = load_config(preset=preset, overrides={"generator": overrides}).generator
    return g


def at_equal_time(g, minutes: float):
    """``g`` trained for ``minutes`` of wall time, whatever its planned length."""
    if g.kind == "diffusion":
        return dataclasses.replace(g, budget_minutes=minutes, train_steps=max(g.train_steps, DIFFUSION_CAP_STEPS))
    factor = GAN_CAP_KIMG / g.train_kimg
    changes: dict = {"budget_minutes": minutes, "train_kimg": GAN_CAP_KIMG}
    if hasattr(g, "phase_kimg"):  # progressive growing keeps each phase's share of the training
        changes["phase_kimg"] = g.phase_kimg * factor
    if hasattr(g, "fd_every_kimg") and g.fd_every_kimg > 0:
        changes["fd_every_kimg"] = g.fd_every_kimg * factor
    return dataclasses.replace(g, **changes)


def _trained(folder: Path, gen_cfg, train) -> bool:
    """A saved generator in ``folder`` trained on ``train`` with these settings."""
    meta = folder / "generator" / "generator.json"
    if not meta.is_file():
        return False
    saved = json.loads(meta.read_text())
    wanted = json.loads(json.dumps(to_dict(gen_cfg), default=json_default))  # as the saved JSON spells it
    return saved.get("train_fingerprint") == train.fingerprint() and saved.get("config") == wanted


def score_family(name: str, cfg: RunConfig, folder: Path, gen, splits: DataSplits, judge, extractor, device: str, *,
                 downstream: bool, quiet: bool) -> tuple[dict, object]:
    from synthmed.metrics.conditional_accuracy import conditional_accuracy
    from synthmed.metrics.diversity import class_diversity
    from synthmed.metrics.evaluate import evaluate, real_fd_floor

    guidance = step_choose_guidance(cfg, folder, gen, splits, judge, quiet=quiet)
    counts = sample_counts(cfg, splits.train)
    syn = gen.sample(counts, seed=cfg.seed + 1, guidance=guidance["chosen"] if guidance else None,
                     progress=not quiet)
    ca = conditional_accuracy(judge.classifier, syn, splits.test)
    ev = evaluate(splits.test, syn, extractor, metrics=("fid", "precision", "recall", "coverage"), per_class=False,
                  n_boot=cfg.evaluate.n_boot, k=cfg.evaluate.k, seed=cfg.seed,
                  real_train_fingerprint=splits.train.fingerprint())
    m = ev["rows"][0]["metrics"]
    floor = real_fd_floor(extractor, splits.val, splits.test, syn.class_counts(), seed=cfg.seed)
    div = class_diversity(extractor.extract(splits.test), splits.test.labels, extractor.extract(syn), syn.labels,
                          splits.class_names, k=cfg.evaluate.k, seed=cfg.seed)
    d = gen.describe()
    h = gen.history
    length = (f"{d['train_kimg']:.3g} kimg" if d.get("train_kimg") is not None else f"{d['train_steps']} steps")
    row = {
        "kind": gen.kind, "summary": d.get("summary"), "num_parameters": gen.num_parameters,
        "train_seconds": h.get("train_seconds"), "train_steps": d.get("train_steps"), "train_kimg": d.get("train_kimg"),
        "train_length": length, "train_images_per_second": h.get("images_per_second"),
        "budget": h.get("budget"), "guidance": syn.meta.get("guidance"), "sampler": syn.meta.get("sampler"),
        "sampling_images_per_second": syn.meta["images_per_second"], "n_synthetic": len(syn),
        "conditional_accuracy": ca["accuracy"]["accuracy"],
        "conditional_accuracy_per_class": {c: e["accuracy"] for c, e in ca["per_class"].items()},
        "fd": m["fid"]["value"], "fd_ci": [m["fid"].get("ci_low"), m["fid"].get("ci_high")],
        "fd_real_floor": floor["fd"], "fd_real_floor_n": floor["n"],
        "fd_ratio": m["fid"]["value"] / max(floor["fd"], 1e-12),
        "precision": m["precision"]["value"], "recall": m["recall"]["value"], "coverage": m["coverage"]["value"],
        "collapsed_classes": div["collapsed"],
    }
    if downstream:
        down = step_downstream(cfg, folder, splits, syn, device, gen.train_fingerprint, quiet=quiet)
        diff = down["difference"]["balanced_accuracy"]
        row["downstream"] = {"real": down["summary"]["real"]["balanced_accuracy"],
                             "augmented": down["summary"]["augmented"]["balanced_accuracy"], "difference": diff,
                             "seeds": down["seeds"], "seconds": down["seconds"]}
    return row, syn


def compare_generators(cfg: RunConfig, families: dict[str, object], *, minutes: float, downstream: bool = True,
                       quiet: bool = False) -> dict:
    """Train every family of ``families`` (name -> generator config) for ``minutes`` on ``cfg``'s data
    and score them alike; ``cfg.out_dir / cfg.name`` is the output folder. Returns the comparison."""
    if not families:
        raise ConfigError("compare: no generator families given (e.g. --generators diffusion,r3gan,progan)")
    if not minutes > 0:
        raise ConfigError(f"compare: --minutes must be > 0, got {minutes}")
    t_start = time.time()
    planned = {name: at_equal_time(g, minutes) for name, g in families.items()}
    runs = {name: dataclasses.replace(cfg, generator=g) for name, g in planned.items()}
    for run_cfg in runs.values():
        validate(run_cfg)  # every family's settings are checked before the first one trains
    out, device = prepare(cfg)
    atomic_write_json({"minutes": minutes, "downstream": downstream,
                       "families": {n: to_dict(g) for n, g in planned.items()}}, out / "comparison_plan.json")
    splits = step_data(cfg, out, quiet=quiet)
    judge = step_judge(cfg, splits, device, quiet=quiet)
    extractor = feature_extractor(cfg, judge, device)
    rows, grids = {}, {}
    for name, run_cfg in runs.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        _log(f"compare: {name} ({run_cfg.generator.kind}) for {minutes:g} min of training", quiet)
        if _trained(folder, run_cfg.generator, splits.train):
            from synthmed.generators.registry import load_generator

            gen = load_generator(folder / "generator", device=device)
            _log(f"compare: {name}: trained already ({folder / 'generator'})", quiet)
        else:
            gen = step_train(run_cfg, folder, splits, device, quiet=quiet)
        rows[name], grids[name] = score_family(name, run_cfg, folder, gen, splits, judge, extractor, device,
                                               downstream=downstream, quiet=quiet)
    import torch

    from synthmed.runtime import set_threads

    result = {
        "data": {"source": splits.source, "split_policy": splits.split_policy, "n_train": len(splits.train),
                 "n_val": len(splits.val), "n_test": len(splits.test), "classes": splits.class_names,
                 "train_fingerprint": splits.train.fingerprint()},
        "minutes_per_family": minutes, "device": device, "threads": set_threads(cfg.threads),
        "torch": torch.__version__, "seed": cfg.seed,
        "extractor": getattr(extractor, "name", cfg.evaluate.extractor),
        "judge": {"arch": cfg.evaluate.judge.arch, "trained_on": "real training split"},
        "real_split": "test", "n_boot": cfg.evaluate.n_boot,
        "downstream_seeds": list(cfg.downstream.seeds) if downstream else None,
        "families": rows,
        "ranking_by_fd": sorted(rows, key=lambda n: rows[n]["fd"]),
        "wall_seconds": time.time() - t_start,
    }
    atomic_write_json(result, out / "comparison.json")
    atomic_write_text(comparison_markdown(result), out / "comparison.md")
    from synthmed.report.html import write_report

    write_report(out / "report.html", {"title": f"synthmed generator comparison: {cfg.name}", "run_name": cfg.name,
                                       "device": device, "comparison": result, "config": to_dict(cfg)},
                 extra_grids=_grids(splits, grids))
    _log(f"compare: done in {result['wall_seconds'] / 60:.1f} min; by FD: {' < '.join(result['ranking_by_fd'])}",
         quiet)
    return result


def _grids(splits: DataSplits, sets: dict) -> dict:
    from synthmed.report.figures import image_grid

    out = {"real training images": image_grid(splits.train, per_class=8, seed=0)}
    for name, syn in sets.items():
        out[f"{name} samples"] = image_grid(syn, per_class=8, seed=0)
    return out


def comparison_markdown(result: dict) -> str:
    lines = [f"Generator families at equal wall time: {describe(result)}\n",
             "| family | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in result["families"].items():
        lines.append(f"| {name} | " + " | ".join(table_cells(row)) + " |")
    lines.append(f"\nRanking by FD: {' < '.join(result['ranking_by_fd'])}. Total wall time "
                 f"{result['wall_seconds'] / 60:.1f} min.\n")
    return "\n".join(lines)


__all__ = ["compare_generators", "family_generator_config", "at_equal_time", "comparison_markdown",
           "DEFAULT_PRESETS"]
