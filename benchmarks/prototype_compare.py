"""Prototype guidance vs class embeddings (`improve`), same split, same U-Net, same steps.

Both arms are the U-Net whose class vector is concatenated with the time embedding: arm
"prototype" conditions on frozen class prototypes (convolutional prototype learning on the domain
features of the real training split, features/prototypes.py); arm "class embedding" on learned,
randomly initialised class vectors of the same width. Each is scored per class by an independent
grader (a classifier trained on the real training split with another seed, not the network the
prototypes came from): conditional accuracy, FD, precision and recall in the grader's features
against the real test split; then the `improve` protocol: a classifier trained on synthetic images
only vs one trained on the real training split only, both tested on held-out real images (macro
precision / recall / F1).

    python benchmarks/prototype_compare.py                        # BloodMNIST, 50 per class, CPU
    python benchmarks/prototype_compare.py --per-class 100 --image-size 28 --gen-steps 20000 --device cuda

Writes benchmarks/results/prototype_compare.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


from synthmed.classifiers import classification_metrics, train_classifier
from synthmed.config import load_config
from synthmed.data.sources import load_dataset
from synthmed.features.domain import DomainExtractor
from synthmed.features.prototypes import learn_prototypes
from synthmed.metrics.conditional_accuracy import conditional_accuracy
from synthmed.metrics.evaluate import evaluate
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.runtime import resolve_device, set_threads

ARMS = ("class embedding", "prototype")


def build_config(args):
    overrides = {
        "seed": 0, "device": args.device,
        "data": {"dataset": "medmnist:bloodmnist", "data_root": str(args.data_root), "image_size": 28,
                 "train_per_class": args.per_class},
        "generator": {"space": "pixel", "block_out_channels": args.widths, "layers_per_block": 1, "lr": 2e-3,
                      "warmup_steps": 50, "batch_size": args.batch_size, "train_steps": args.gen_steps,
                      "budget_minutes": args.gen_minutes, "sample_steps": 20, "guidance": args.guidance,
                      "checkpoint_every": 0, "log_every": 50},
        "evaluate": {"judge": {"arch": "smallcnn", "steps": args.clf_steps, "eval_every": 50, "patience": 6,
                               "class_weighting": "balanced"}},
    }
    return load_config(overrides=overrides)


def train_arm(arm: str, cfg, splits, protos, device: str, seed: int):
    g = cfg.generator
    dim = int(protos.vectors.shape[2])
    gcfg = dataclasses.replace(g, conditioning="prototype" if arm == "prototype" else "class", class_embed_dim=dim)
    train = splits.train
    gen = DiffusionGenerator(gcfg, image_size=train.image_size, channels=train.channels,
                             class_names=train.class_names, device=device, seed=seed)
    if arm == "prototype":
        gen.set_class_vectors(protos.class_vectors(), {"extractor": "domain", **protos.describe()})
    t0 = time.time()
    hist = gen.fit(train, splits.val, progress=False)
    return gen, {"train_seconds": time.time() - t0, "train_steps": gen.step, "num_parameters": gen.num_parameters,
                 "final_loss": hist["loss_curve"][-1][1] if hist["loss_curve"] else None}


def score_arm(gen, splits, grader, clf_cfg, n_per_class: int, device: str, seed: int) -> dict:
    t0 = time.time()
    syn = gen.sample([n_per_class] * splits.train.num_classes, seed=seed + 1, progress=False)
    sample_seconds = time.time() - t0
    ca = conditional_accuracy(grader.classifier, syn)
    ev = evaluate(splits.test, syn, grader, metrics=("fid", "precision", "recall"), n_boot=0, seed=seed)
    rows = {r["class"]: r["metrics"] for r in ev["rows"]}
    per_class = {}
    for name in splits.train.class_names:
        m = rows.get(name, {})
        per_class[name] = {"conditional_accuracy": ca["per_class"][name]["accuracy"],
                           "fd": (m.get("fid") or {}).get("value"), "precision": (m.get("precision") or {}).get("value"),
                           "recall": (m.get("recall") or {}).get("value")}
    total = rows["total"]
    t1 = time.time()
    synthetic_only = train_classifier(syn, splits.val, clf_cfg, seed=seed, device=device)
    test = classification_metrics(splits.test.labels, synthetic_only.predict_proba(splits.test),
                                  splits.test.class_names)
    return {"conditional_accuracy": ca["accuracy"]["accuracy"], "fd": total["fid"]["value"], "precision": total["precision"]["value"],
            "recall": total["recall"]["value"], "per_class": per_class, "sample_seconds": sample_seconds,
            "synthetic_only": _prf(test), "synthetic_only_seconds": time.time() - t1}


def _prf(m: dict) -> dict:
    return {"precision": m["precision_macro"], "recall": m["recall_macro"], "f1": m["f1_macro"],
            "accuracy": m["accuracy"]}


def markdown(res: dict) -> str:
    a, b = (res["arms"][k] for k in ARMS)
    lines = [f"# Prototype guidance vs class embeddings ({res['setting']})", "",
             "| | class embedding | prototype |", "|---|---|---|"]
    for key, label in (("conditional_accuracy", "conditional accuracy (grader)"), ("fd", "FD (grader features, vs test)"),
                       ("precision", "precision"), ("recall", "recall")):
        lines.append(f"| {label} | {a[key]:.3f} | {b[key]:.3f} |")
    r = res["real_only"]
    for key in ("precision", "recall", "f1"):
        lines.append(f"| synthetic-only classifier {key} on real test (real-only: {r[key]:.3f}) | "
                     f"{a['synthetic_only'][key]:.3f} | {b['synthetic_only'][key]:.3f} |")
    lines.append(f"| generator training (s) | {a['train_seconds']:.0f} ({a['train_steps']} steps) | "
                 f"{b['train_seconds']:.0f} ({b['train_steps']} steps) |")
    lines += ["", "Per class (conditional accuracy / FD / precision / recall):", "",
              "| class | class embedding | prototype |", "|---|---|---|"]
    fmt = lambda d: " / ".join("-" if d[k] is None else f"{d[k]:.2f}" for k in  # noqa: E731
                               ("conditional_accuracy", "fd", "precision", "recall"))
    for name in a["per_class"]:
        lines.append(f"| {name} | {fmt(a['per_class'][name])} | {fmt(b['per_class'][name])} |")
    lines += ["", f"Wall time {res['wall_seconds'] / 60:.1f} min on {res['device']} ({res['threads']} thread(s)).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist")
    ap.add_argument("--per-class", type=int, default=50, help="real training images per class (paper: 100)")
    ap.add_argument("--gen-steps", type=int, default=400, help="generator steps per arm (the same for both)")
    ap.add_argument("--gen-minutes", type=float, default=0, help="time budget per arm instead (0: --gen-steps)")
    ap.add_argument("--widths", type=lambda s: [int(w) for w in s.split(",")], default=[16, 32, 64],
                    help="U-Net block_out_channels")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--samples-per-class", type=int, default=50, help="paper: 100 per class")
    ap.add_argument("--clf-steps", type=int, default=300, help="optimizer steps of every classifier")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if args.gen_minutes <= 0:
        args.gen_minutes = None

    t_start = time.time()
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    cfg = build_config(args)
    splits = load_dataset(cfg.data)
    judge_cfg = cfg.evaluate.judge
    seed = cfg.seed
    # the feature extractor the prototypes are learned on (as `synthmed run` does: the run's judge) ...
    t0 = time.time()
    extractor = DomainExtractor(splits.train, splits.val, judge_cfg, seed=seed, device=device)
    protos = learn_prototypes(extractor.extract(splits.train), splits.train.labels, splits.train.num_classes,
                              cfg.generator.prototypes, seed=seed)
    proto_seconds = time.time() - t0
    # ... and an independent grader (another seed) that scores both arms
    grader = DomainExtractor(splits.train, splits.val, judge_cfg, seed=seed + 1001, device=device)
    clf_cfg = dataclasses.replace(judge_cfg, class_weighting="none")
    real_only = train_classifier(splits.train, splits.val, clf_cfg, seed=seed, device=device)
    real_metrics = _prf(classification_metrics(splits.test.labels, real_only.predict_proba(splits.test),
                                               splits.test.class_names))
    res = {"setting": f"BloodMNIST 28 px, {args.per_class} real training images per class, "
                      f"{args.samples_per_class} synthetic per class, U-Net {args.widths}, "
                      f"{args.gen_steps} steps of batch {args.batch_size}",
           "device": device, "threads": threads, "per_class_train": args.per_class,
           "generator": dataclasses.asdict(cfg.generator), "prototypes": {**protos.describe(),
                                                                          "seconds_with_extractor": proto_seconds},
           "n_test": len(splits.test), "real_only": real_metrics, "arms": {}}
    for arm in ARMS:
        gen, train_rec = train_arm(arm, cfg, splits, protos, device, seed)
        res["arms"][arm] = {**train_rec, **score_arm(gen, splits, grader, clf_cfg, args.samples_per_class, device, seed)}
        print(f"{arm}: {json.dumps({k: v for k, v in res['arms'][arm].items() if k != 'per_class'})}", flush=True)
    res["wall_seconds"] = time.time() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prototype_compare.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "prototype_compare.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
