"""Every paper preset through `synthmed run` on the embedded embryo set, at CPU size (issue #11).

Each preset keeps its method (denoiser, conditioning, space, formulation, sampler, guidance, captions,
masks) and gets the same CPU-sized network and budget, so the rows compare methods, not GPU budgets:

- data 32x32 (the embryo set's size), masks rendered (`data.masks.embryo: true`) for every preset;
- U-Net widths [32, 64, 64] (one layer per block, no self-attention), DiT depth 4 width 128 4 heads,
  autoencoder [16, 32, 32] (factor 4) for latent presets, cross-attention width 64;
- lr 1e-3 with 50 warm-up steps (the presets' 2.5e-5 .. 1e-4 are for 50k-step GPU runs and learn
  nothing in minutes), `generator.budget_minutes` for the generator (autoencoder included);
- judge and downstream classifier smallcnn (20 epochs, patience 4), 3 downstream seeds,
  100 synthetic images per class (renal-ldm-masks: as many as the
  real training split has, for the ratio sweep); segmenter (caption accuracy, ratio sweep) 1000 steps, 3 seeds.

    python benchmarks/presets_embryo.py                       # all presets, 4 min each, one after another
    python benchmarks/presets_embryo.py --only renal-ldm,renal-ldm-masks --budget 6
    python benchmarks/presets_embryo.py --jobs 2              # two runs at a time, one per CPU core
    python benchmarks/presets_embryo.py --only improve@bloodmnist,improve-baseline@bloodmnist   # prototypes on Blood

Resumable: a preset whose run folder holds metrics.json is read, not rerun. Writes
``benchmarks/results/presets_embryo_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from synthmed.files import atomic_write_text

PRESETS = ["pcam-ddpm", "pcam-ddpm-dit", "improve", "improve-baseline", "blastdiffusion", "renal-ldm",
           "renal-ldm-masks", "improve@bloodmnist", "improve-baseline@bloodmnist"]
#: what each preset is, for the table
METHOD = {
    "pcam-ddpm": "latent DDPM, U-Net, class embedding",
    "pcam-ddpm-dit": "latent DDPM, DiT, class labels",
    "improve": "pixel DDPM, U-Net, frozen class prototypes",
    "improve-baseline": "pixel DDPM, U-Net, learned class vector",
    "blastdiffusion": "latent DDPM, cross-attention U-Net, class token, ROI crop",
    "renal-ldm": "latent DDPM, cross-attention U-Net, caption tokens",
    "renal-ldm-masks": "latent DDPM, cross-attention U-Net, caption tokens + mask channels",
    "improve@bloodmnist": "improve on BloodMNIST 28 px, 50 training images per class",
    "improve-baseline@bloodmnist": "improve-baseline on BloodMNIST 28 px, 50 training images per class",
}


DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"


def cpu_overrides(preset: str, budget: float) -> list[str]:
    """The shared CPU settings; ``preset@bloodmnist`` runs the preset on BloodMNIST 28 px instead (its official
    split, 50 training images per class: the small-data regime)."""
    if preset.endswith("@bloodmnist"):
        data = ["data.dataset=medmnist:bloodmnist", f"data.data_root={DEFAULT_ROOT}", "data.image_size=28",
                "data.train_per_class=50"]
    else:
        data = ["data.image_size=32", "data.masks.embryo=true"]
    s = data + ["generator.block_out_channels=[32,64,64]",
         "generator.layers_per_block=1", "generator.attention=false", "generator.lr=0.001", "generator.warmup_steps=50",
         "generator.train_steps=100000", f"generator.budget_minutes={budget}", "generator.batch_size=64",
         "generator.cross_attention_dim=64", "generator.dit_depth=4", "generator.dit_width=128", "generator.dit_heads=4",
         "generator.autoencoder.block_out_channels=[16,32,32]", "generator.autoencoder.train_steps=1500",
         "generator.autoencoder.lr=0.001",
         'evaluate.judge={"arch": "smallcnn", "epochs": 20, "patience": 4}',
         'downstream.classifier={"arch": "smallcnn", "epochs": 20, "patience": 4}', "downstream.seeds=[0,1,2]",
         # the segmenter of caption accuracy and of the ratio sweep (runs only where the samples carry captions /
         # masks): 1000 steps, 3 seeds
         "segmentation.steps=1000", "segmentation.seeds=[0,1,2]",
         "samples_per_class=100", "threads=1"]
    if preset == "renal-ldm-masks":
        # the ratio sweep's 0:100 and 100:100 need as many synthetic image-mask pairs per class as the real
        # training split has: sample exactly that many
        s[s.index("samples_per_class=100")] = "samples_per_class=null"
    return s


def run_one(preset: str, args, core: int | None) -> dict:
    out = args.work / preset.replace("@", "_")
    metrics = out / "metrics.json"
    if not metrics.is_file():
        cmd = [sys.executable, "-m", "synthmed", "run", "--preset", preset.split("@")[0], "--quiet",
               "--set", f"name={out.name}", "--set", f"out_dir={args.work}"]
        for item in cpu_overrides(preset, args.budget):
            cmd += ["--set", item]
        if core is not None:
            cmd = ["taskset", "-c", str(core)] + cmd
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out.mkdir(parents=True, exist_ok=True)
        if args.pretrain_autoencoder and _is_latent(preset):
            # the autoencoder trained once for its full steps and cached per split (what a second run on the same
            # split loads anyway): the budget below is then the denoiser's alone
            pre = cmd[:cmd.index("run")] + ["train"] + cmd[cmd.index("run") + 1:]
            pre[pre.index(f"name={out.name}")] = f"name={out.name}-autoencoder"
            pre += ["--set", "generator.budget_minutes=null", "--set", "generator.train_steps=1"]
            t_ae = time.time()
            with open(args.work / f"{out.name}-autoencoder.log", "w") as log:
                if subprocess.call(pre, stdout=log, stderr=subprocess.STDOUT, env=env) != 0:
                    return {"preset": preset, "error": f"autoencoder pretraining failed; see {log.name}"}
            (out / "autoencoder_pretrain.json").write_text(json.dumps({"wall_seconds": time.time() - t_ae}))
        t0 = time.time()
        with open(args.work / f"{preset}.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if rc != 0:
            return {"preset": preset, "error": f"exit {rc}; see {args.work / (preset + '.log')}",
                    "wall_seconds": time.time() - t0}
        (out / "bench_wall.json").write_text(json.dumps({"wall_seconds": time.time() - t0}))
    return summarise(preset, out)


def _is_latent(preset: str) -> bool:
    from synthmed.config import load_config

    return load_config(preset=preset.split("@")[0]).generator.space == "latent"


def summarise(preset: str, out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    run_info = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    wall = json.loads((out / "bench_wall.json").read_text())["wall_seconds"] if (out / "bench_wall.json").is_file() else None
    ev = m["evaluation"]["rows"][0]["metrics"]
    d = m["downstream"]["difference"]["balanced_accuracy"]
    g = m["generator"]
    row = {
        "preset": preset, "method": METHOD.get(preset, ""), "summary": g.get("summary"),
        "wall_seconds": wall, "timings": run_info.get("timings"), "train_steps": g.get("train_steps"),
        "train_seconds": g.get("train_seconds"), "num_parameters": g.get("num_parameters"),
        "conditional_accuracy": m["conditional_accuracy"]["accuracy"]["accuracy"],
        "conditional_accuracy_per_class": {c: e["accuracy"] for c, e in m["conditional_accuracy"]["per_class"].items()},
        "fid": ev["fid"]["value"], "precision": ev["precision"]["value"], "recall": ev["recall"]["value"],
        "coverage": ev["coverage"]["value"],
        "downstream_real": m["downstream"]["summary"]["real"]["balanced_accuracy"]["mean"],
        "downstream_augmented": m["downstream"]["summary"]["augmented"]["balanced_accuracy"]["mean"],
        "downstream_difference": d["mean"], "downstream_ci": [d.get("ci_low"), d.get("ci_high")],
        "downstream_seeds": m["downstream"].get("seeds"),
        "autoencoder": {k: (g.get("autoencoder") or {}).get(k) for k in ("train_steps", "cache", "reconstruction")}
        if g.get("autoencoder") else None,
    }
    for key in ("caption_accuracy", "segmentation_downstream"):
        if key in m:
            row[key] = m[key]
    return row


def markdown(rows: list[dict], args) -> str:
    lines = ["# Paper presets on the embryo set through `synthmed run` (CPU size)", "",
             f"Embedded embryo set (940 images, 32x32, masks rendered), official synthmed split; CPU-sized networks, "
             f"generator budget {args.budget:g} min each (latent presets: the denoiser's, after an autoencoder trained "
             "once per split for its full 1500 steps and cached, `--pretrain-autoencoder`; in rows marked "
             "'autoencoder in budget' it was trained inside the budget, see the steps column), 100 synthetic images "
             "per class (renal-ldm-masks: the real training counts), "
             "judge smallcnn on the real training split, downstream quick check smallcnn over 3 seeds "
             "(real vs real + synthetic, paired 95% t interval). One CPU thread per run.", "",
             "| preset | method | denoiser steps | wall min | cond. acc. | FD (domain) | precision | recall | coverage | "
             "downstream real -> +synthetic | difference [95% CI] |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {METHOD.get(r['preset'], '')} | failed: {r['error']} |||||||||")
            continue
        ci = r["downstream_ci"]
        ci_s = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci[0] is not None else ""
        wall = f"{r['wall_seconds'] / 60:.1f}" if r["wall_seconds"] else "?"
        ae = r.get("autoencoder") or {}
        steps = f"{r['train_steps']}" + (f" (autoencoder {ae.get('train_steps')}, {ae.get('cache')})" if ae else "")
        lines.append(f"| {r['preset']} | {r['method']} | {steps} | {wall} | {r['conditional_accuracy']:.3f} | "
                     f"{r['fid']:.1f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['coverage']:.3f} | "
                     f"{r['downstream_real']:.3f} -> {r['downstream_augmented']:.3f} | {r['downstream_difference']:+.3f}{ci_s} |")
    for r in rows:
        ca = r.get("caption_accuracy")
        if ca and "per_class" in ca:
            ref, seg = ca["real_reference"], ca["segmenter"]
            lines += ["", f"## Caption accuracy: {r['preset']} ({ca['n_images']} synthetic images; reference: "
                      f"{ref['n_images']} real test images with their true masks' captions)", "",
                      f"Segmenter: {seg.get('kind')} trained on the real training split ({seg.get('n_train')} images, "
                      f"widths {seg.get('widths')}, loss {seg.get('loss')}, best step {seg.get('best_step')} of "
                      f"{seg.get('steps')}), real-test mean Dice {seg['real_test']['mean_dice']:.3f}. Presence: the "
                      "class is / is not in the caption rebuilt from the segmentation as in the generating caption; "
                      "level: same low / medium / high / absent. 95% Wilson intervals over images.", "",
                      "| mask class | synthetic presence | synthetic level | real presence | real level | segmenter Dice |",
                      "|---|---|---|---|---|---|"]
            for name, c in ca["per_class"].items():
                rc = ref["per_class"][name]
                dice = seg["real_test"].get("dice", {}).get(name)
                ci = lambda c, k: f"{c[k + '_accuracy']:.3f} [{c[k + '_ci95'][0]:.2f}, {c[k + '_ci95'][1]:.2f}]"  # noqa: E731
                lines.append(f"| {name} | {ci(c, 'presence')} | {ci(c, 'level')} | {ci(rc, 'presence')} | "
                             f"{ci(rc, 'level')} | {dice:.3f} |" if dice is not None else
                             f"| {name} | {ci(c, 'presence')} | {ci(c, 'level')} | {ci(rc, 'presence')} | {ci(rc, 'level')} | – |")
            lines.append(f"| **mean / exact caption** | {ca['mean_presence_accuracy']:.3f} | {ca['mean_level_accuracy']:.3f} "
                         f"(exact {ca['exact_caption_rate']:.3f}) | {ref['mean_presence_accuracy']:.3f} | "
                         f"{ref['mean_level_accuracy']:.3f} (exact {ref['exact_caption_rate']:.3f}) | "
                         f"{seg['real_test']['mean_dice']:.3f} |")
        sd = r.get("segmentation_downstream")
        if sd and sd.get("summary"):
            lines += ["", f"## Segmentation ratio sweep: {r['preset']} (real test Dice / IoU of a U-Net segmenter, "
                      f"seeds {sd.get('seeds')})", "",
                      "| real:synthetic | Dice mean ± std | IoU mean ± std | Dice vs 100:0 [95% CI] |", "|---|---|---|---|"]
            for proto, row in sd["summary"].items():
                vs = (row.get("vs_100_0") or {}).get("mean_dice") or {}
                d, i = row["mean_dice"], row["mean_iou"]
                vs_s = (f"{vs['mean']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}]"
                        if vs.get("ci_low") is not None else ("–" if not vs else f"{vs['mean']:+.3f}"))
                lines.append(f"| {proto.replace('ratio-', '')} | {d['mean']:.3f} ± {d['std'] or 0:.3f} | "
                             f"{i['mean']:.3f} ± {i['std'] or 0:.3f} | {vs_s} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(PRESETS))
    ap.add_argument("--budget", type=float, default=4.0, help="generator minutes per preset")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each pinned to its own core)")
    ap.add_argument("--pretrain-autoencoder", action="store_true",
                    help="latent presets: train the autoencoder first for its full steps (cached per split), so the "
                         "budget is the denoiser's")
    ap.add_argument("--work", type=Path, default=Path("runs/presets_embryo"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: summarise the presets whose runs under --work have finished")
    ap.add_argument("--also", action="append", default=[], metavar="DIR:LABEL",
                    help="with --collect: add the finished runs under DIR as extra rows, their names suffixed LABEL")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    presets = args.only.split(",")
    if args.collect:
        rows = [summarise(p, args.work / p.replace("@", "_")) for p in presets
                if (args.work / p.replace("@", "_") / "metrics.json").is_file()]
        for item in args.also:
            folder, label = item.split(":", 1)
            for p in presets:
                d = Path(folder) / p.replace("@", "_")
                if (d / "metrics.json").is_file():
                    rows.append({**summarise(p, d), "preset": f"{p} {label}"})
        out = args.out / "presets_embryo_cpu.json"
        atomic_write_text(json.dumps({"budget_minutes": args.budget, "rows": rows}, indent=1, default=str) + "\n", out)
        atomic_write_text(markdown(rows, args), out.with_suffix(".md"))
        print(markdown(rows, args))
        return
    free = queue.Queue()  # one run per core at a time: a run takes a free core and gives it back
    for core in range(min(args.jobs, os.cpu_count() or 1)):
        free.put(core)

    def pinned(preset: str) -> dict:
        core = free.get()
        try:
            return run_one(preset, args, core if args.jobs > 1 else None)
        finally:
            free.put(core)

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(pinned, presets))
    out = args.out / "presets_embryo_cpu.json"
    old = {r["preset"]: r for r in (json.loads(out.read_text())["rows"] if out.is_file() else [])}
    old.update({r["preset"]: r for r in rows})
    merged = [old[p] for p in PRESETS if p in old] + [r for p, r in old.items() if p not in PRESETS]
    atomic_write_text(json.dumps({"budget_minutes": args.budget, "rows": merged}, indent=1, default=str) + "\n", out)
    atomic_write_text(markdown(merged, args), out.with_suffix(".md"))
    print(markdown(merged, args))


if __name__ == "__main__":
    main()
