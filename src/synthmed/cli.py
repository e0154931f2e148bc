"""`synthmed` command line: a thin layer over the Python API (synthmed.pipeline, synthmed.data).

Every user mistake ends in one line ``error: <what> -- <how to fix>`` and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from synthmed import __version__
from synthmed.config import ConfigError, load_config, preset_names, set_dotted

EXIT_USER_ERROR = 2


# --------------------------------------------------------------------------- shared options


def _add_config_options(p: argparse.ArgumentParser, config_positional: bool = False) -> None:
    if config_positional:
        p.add_argument("config", nargs="?", help="YAML config file (keys as in `synthmed presets --show demo`)")
    p.add_argument("--preset", help=f"named preset: {', '.join(preset_names())}")
    p.add_argument("--dataset", help="embryo | folder:PATH | csv:PATH | medmnist:FLAG")
    p.add_argument("--data-root", help="folder holding MedMNIST <flag>.npz files (default ~/.medmnist)")
    p.add_argument("--image-size", type=int, help="square image size every image is brought to")
    p.add_argument("--name", help="run name (folder under --out)")
    p.add_argument("--out", help="parent folder of run folders (default runs)")
    p.add_argument("--seed", type=int, help="run seed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set generator.train_steps=500 (repeatable)")


def _config_from_args(args, default_preset: str | None = None):
    overrides: dict = {}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. generator.train_steps=500")
        key, val = item.split("=", 1)
        set_dotted(overrides, key.strip(), val)
    direct = {"data.dataset": args.dataset, "data.data_root": args.data_root, "data.image_size": args.image_size,
              "name": args.name, "out_dir": args.out, "seed": args.seed, "device": args.device}
    for key, val in direct.items():
        if val is not None:
            set_dotted(overrides, key, json.dumps(val))
    config = getattr(args, "config", None)
    preset = args.preset or (None if config else default_preset)
    if args.dataset and args.dataset.startswith("medmnist:") and args.image_size is None and not config:
        # MedMNIST images are 28 px: keep them native unless the user asks otherwise
        overrides.setdefault("data", {}).setdefault("image_size", 28)
        if preset == "demo":
            overrides.setdefault("generator", {}).setdefault("block_out_channels", [32, 64, 64])
    return load_config(config, preset=preset, overrides=overrides)


# --------------------------------------------------------------------------- verbs


def cmd_run(args) -> int:
    from synthmed.pipeline import run

    cfg = _config_from_args(args, default_preset="demo" if args.verb == "demo" else None)
    out = run(cfg, resume=not args.no_resume, download=args.download, quiet=args.quiet)
    print(f"report: {(out / 'report.html').resolve()}")
    return 0


def cmd_train(args) -> int:
    from synthmed import pipeline

    cfg = _config_from_args(args)
    out, device = pipeline.prepare(cfg)
    splits = pipeline.step_data(cfg, out, download=args.download, quiet=args.quiet)
    pipeline.step_train(cfg, out, splits, device, resume=not args.no_resume, quiet=args.quiet)
    print(f"generator: {(out / 'generator').resolve()}")
    return 0


def cmd_sample(args) -> int:
    from synthmed import pipeline
    from synthmed.config import load_config as _load
    from synthmed.runtime import resolve_device, set_threads

    run_dir = Path(args.run_dir)
    if not (run_dir / "generator").is_dir():
        raise FileNotFoundError(f"{run_dir} has no trained generator (expected {run_dir / 'generator'}); "
                                "run `synthmed train` first")
    cfg = _load(run_dir / "config.yaml")
    set_threads(cfg.threads)
    device = resolve_device(args.device or cfg.device)
    gen = pipeline.load_run_generator(run_dir, device=device)
    n = args.per_class if args.per_class is not None else (cfg.samples_per_class or 100)
    folder = Path(args.out) if args.out else run_dir / "samples"
    if args.steps or args.sampler:
        gen.cfg.sample_steps = args.steps or gen.cfg.sample_steps
        gen.cfg.sampler = args.sampler or gen.cfg.sampler
    pipeline.step_sample(cfg, run_dir, gen, [n] * len(gen.class_names), guidance=args.guidance, seed=args.seed,
                         folder=folder, quiet=args.quiet)
    print(f"samples: {folder.resolve()}")
    return 0


def cmd_report(args) -> int:
    from synthmed import pipeline
    from synthmed.config import load_config as _load
    from synthmed.data.sources import load_dataset

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a synthmed run folder (no config.yaml)")
    cfg = _load(run_dir / "config.yaml")
    splits = load_dataset(cfg.data)  # deterministic: the same real images the run used
    path = pipeline.step_report(run_dir, splits, quiet=args.quiet)
    print(f"report: {path.resolve()}")
    return 0


def cmd_evaluate(args) -> int:
    from synthmed import pipeline
    from synthmed.config import EvaluateConfig
    from synthmed.runtime import resolve_device, set_threads

    set_threads(args.threads)
    device = resolve_device(args.device or "auto")
    synthetic = pipeline.resolve_synthetic(args.synthetic)
    cfg, splits = pipeline.resolve_real(args.real, image_size=synthetic.image_size, channels=synthetic.channels,
                                        data_root=args.data_root, download=args.download)
    if args.seed is not None:
        cfg.seed = args.seed
    ev = cfg.evaluate if isinstance(cfg.evaluate, EvaluateConfig) else EvaluateConfig()
    for key in ("extractor", "real_split", "n_boot", "k", "lpips_weights_dir"):
        if getattr(args, key) is not None:
            setattr(ev, key, getattr(args, key))
    ev.lpips = ev.lpips or args.lpips
    ev.memorisation = ev.memorisation and not args.no_memorisation
    judge = pipeline.step_judge(cfg, splits, device, quiet=args.quiet)
    extractor = pipeline.feature_extractor(cfg, judge, device)
    out = Path(args.out) if args.out else _default_out(args.synthetic, "evaluation")
    result = pipeline.evaluate_synthetic(splits, synthetic, ev, judge, extractor, out, seed=cfg.seed,
                                         quiet=args.quiet)
    from synthmed.generators.base import atomic_write_json

    atomic_write_json({k: v for k, v in result.items() if k != "evaluation"}, out / "evaluation" / "judge_and_audit.json")
    card = pipeline.record_evaluation_in_card(pipeline.synthetic_set_folder(args.synthetic), synthetic, result)
    print(f"evaluation: {(out / 'evaluation').resolve()}")
    if card:
        print(f"data card: {card.resolve()}")
    return 0


def _default_out(source: str, what: str) -> Path:
    p = Path(source)
    if p.is_dir():
        return p
    raise ValueError(f"--out is required when the synthetic set is given as {source!r}")


def cmd_filter(args) -> int:
    from synthmed import pipeline
    from synthmed.data.export import save_image_set
    from synthmed.generators.base import atomic_write_json
    from synthmed.runtime import resolve_device, set_threads
    from synthmed.selection.filter import filter_synthetic, generate_until

    set_threads(args.threads)
    device = resolve_device(args.device or "auto")
    run_dir = Path(args.source)
    is_run = (run_dir / "config.yaml").is_file() and (run_dir / "generator").is_dir()
    if args.per_class and not is_run:
        raise ValueError("--per-class generates until N images pass, which needs a run folder with a trained "
                         f"generator; {args.source} is not one")
    real_spec = args.real or (str(run_dir) if (run_dir / "config.yaml").is_file() else None)
    if real_spec is None:
        raise ValueError("--real DATASET is required: the real images whose feature manifold defines realism")
    if is_run and args.per_class:
        gen = pipeline.load_run_generator(run_dir, device=device)
        cfg, splits = pipeline.resolve_real(real_spec, image_size=gen.image_size, channels=gen.channels,
                                            data_root=args.data_root)
        judge = pipeline.step_judge(cfg, splits, device, quiet=args.quiet)
        extractor = pipeline.feature_extractor(cfg, judge, device)
        kept, report = generate_until(gen, splits.train, extractor, args.per_class, mode=args.mode,
                                      threshold=args.threshold, k=args.k, budget_factor=args.budget_factor,
                                      seed=args.seed if args.seed is not None else cfg.seed + 1,
                                      held_out=splits.val, progress=not args.quiet)
    else:
        synthetic = pipeline.resolve_synthetic(args.source)
        cfg, splits = pipeline.resolve_real(real_spec, image_size=synthetic.image_size,
                                            channels=synthetic.channels, data_root=args.data_root)
        judge = pipeline.step_judge(cfg, splits, device, quiet=args.quiet)
        extractor = pipeline.feature_extractor(cfg, judge, device)
        kept, report = filter_synthetic(synthetic, splits.train, extractor, mode=args.mode, threshold=args.threshold,
                                        k=args.k, held_out=splits.val)
    reference = report["real_val_acceptance"]
    out = Path(args.out)
    save_image_set(kept, out)
    atomic_write_json(report, out / "filter_report.json")
    for name, e in (report.get("per_class") or {}).items():
        accepted = e.get("accepted", e.get("kept", 0))
        rate = accepted / e["generated"] if e.get("generated") else float("nan")
        ref_rate = reference["per_class"].get(name)
        print(f"{name:>20}: kept {e.get('kept')} ({accepted} of {e.get('generated')} generated passed, "
              f"acceptance {rate:.2f}; real validation images: {'-' if ref_rate is None else f'{ref_rate:.2f}'})")
    print(f"real validation images passing the same filter: {reference['accepted']} of {reference['n']} "
          f"({reference['acceptance_rate']:.2f}), what a generator indistinguishable from real data would get")
    too_strict = [c for c, r in reference["per_class"].items() if r is not None and r < 0.1]
    if too_strict:
        print(f"warning: the filter rejects over 90% of the REAL validation images of {too_strict}: for these "
              "classes it is too strict to tell good synthetic images from bad (typical for small classes in "
              "class mode); lower --threshold or use --mode global", file=sys.stderr)
    print(f"filtered set: {out.resolve()}")
    return 0


def cmd_downstream(args) -> int:
    from synthmed import pipeline

    cfg = _config_from_args(args)
    d = cfg.downstream
    if args.protocols:
        d.protocols = args.protocols.split(",")
    if args.filters:
        d.filters = args.filters.split(",")
    if args.subsets is not None:
        d.subsets = args.subsets
    if args.per_class is not None:
        d.subset_per_class = args.per_class
    if args.reuse_generator:
        d.reuse_generator = True
    out, device = pipeline.prepare(cfg)
    splits = pipeline.step_data(cfg, out, download=args.download, quiet=args.quiet)
    pipeline.step_downstream_experiment(cfg, out, splits, device, quiet=args.quiet)
    pipeline.step_report(out, splits, quiet=args.quiet)
    print(f"downstream results: {(out / 'downstream').resolve()}; report: {(out / 'report.html').resolve()}")
    return 0


def _print_splits(splits) -> None:
    s = splits.summary()
    print(f"source: {s['source']}")
    print(f"split:  {s['split_policy']}")
    names = splits.class_names
    width = max(len(n) for n in names + ["class"])
    print(f"{'class':<{width}}  {'train':>7} {'val':>7} {'test':>7}")
    for i, name in enumerate(names):
        counts = [splits.train.class_counts()[i], splits.val.class_counts()[i], splits.test.class_counts()[i]]
        print(f"{name:<{width}}  " + " ".join(f"{c:>7}" for c in counts))
    print(f"{'total':<{width}}  {len(splits.train):>7} {len(splits.val):>7} {len(splits.test):>7}")
    t = s["train"]
    print(f"image shape {t['image_shape']}; patients: {t['num_patients']}; fingerprints "
          f"train {t['fingerprint']} val {s['val']['fingerprint']} test {s['test']['fingerprint']}")
    skipped = t.get("skipped")
    if skipped:
        print(f"skipped: {skipped}")


def cmd_data(args) -> int:
    from synthmed.data.export import save_image_set
    from synthmed.data.sources import load_dataset
    from synthmed.data.splits import disjoint_subsets, per_class_subset

    cfg = _config_from_args(args)
    splits = load_dataset(cfg.data, download=args.download)
    if args.data_verb == "inspect":
        _print_splits(splits)
        return 0
    out = Path(args.to)
    if args.data_verb == "split":
        for name in ("train", "val", "test"):
            save_image_set(getattr(splits, name), out / name)
        (out / "split.json").write_text(json.dumps(splits.summary(), indent=2) + "\n")
        _print_splits(splits)
        print(f"written: {out.resolve()}/{{train,val,test}}")
        return 0
    # subset
    train = splits.train
    if args.k and args.k > 1:
        subsets = disjoint_subsets(train, args.k, n_per_class=args.per_class, fraction=args.fraction, seed=cfg.seed)
    elif args.per_class:
        subsets = [per_class_subset(train, args.per_class, seed=cfg.seed)]
    else:
        raise ConfigError("data subset needs --per-class N and/or --k K (with --fraction F)")
    for i, sub in enumerate(subsets):
        save_image_set(sub, out / f"subset{i}")
        counts = ", ".join(f"{c}={n}" for c, n in zip(sub.class_names, sub.class_counts()))
        print(f"subset{i}: {len(sub)} images ({counts}) fingerprint {sub.fingerprint()}")
    print(f"written: {out.resolve()}")
    return 0


def cmd_presets(args) -> int:
    import yaml

    from synthmed.config import preset_dict

    if args.show:
        print(yaml.safe_dump(preset_dict(args.show), sort_keys=False), end="")
        return 0
    for name in preset_names():
        print(name)
    return 0


# --------------------------------------------------------------------------- parser


def _add_training_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in the run folder")
    q.add_argument("--download", action="store_true", help="download MedMNIST files when missing (needs internet)")
    q.add_argument("--quiet", action="store_true", help="no progress output")


def _add_data_run_flags(q: argparse.ArgumentParser) -> None:
    """Options of the verbs that work on existing images (evaluate, filter)."""
    q.add_argument("--data-root", help="folder holding MedMNIST <flag>.npz files")
    q.add_argument("--seed", type=int, help="seed (bootstrap, sampling)")
    q.add_argument("--device", choices=["auto", "cpu", "cuda"])
    q.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: all cores)")
    q.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthmed", description="Synthetic medical images for small, imbalanced "
                                "labelled sets: generate, evaluate, prove they help, report.")
    p.add_argument("--version", action="version", version=f"synthmed {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    for verb, help_ in (("demo", "full run on the embedded embryo dataset (~10 min on 2 CPU cores)"),
                        ("run", "full run: data -> train -> sample -> evaluate -> downstream -> report")):
        q = sub.add_parser(verb, help=help_, description=help_)
        _add_config_options(q, config_positional=(verb == "run"))
        _add_training_flags(q)
        q.set_defaults(func=cmd_run)

    q = sub.add_parser("train", help="load data and train the generator only", description="load data and train the generator")
    _add_config_options(q, config_positional=True)
    _add_training_flags(q)
    q.set_defaults(func=cmd_train)

    q = sub.add_parser("sample", help="generate images from a trained run", description="generate images from a trained run")
    q.add_argument("run_dir", help="run folder holding generator/")
    q.add_argument("--per-class", type=int, help="images per class (default: the config's samples_per_class)")
    q.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = conditional only)")
    q.add_argument("--steps", type=int, help="sampler steps")
    q.add_argument("--sampler", choices=["dpmsolver++", "ddim", "ddpm"])
    q.add_argument("--seed", type=int, help="sampling seed")
    q.add_argument("--out", help="output folder (default RUN_DIR/samples)")
    q.add_argument("--device", choices=["auto", "cpu", "cuda"])
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_sample)

    q = sub.add_parser("evaluate", help="FID/KID/precision/recall/density/coverage/SSIM per class, memorisation audit",
                       description="Compare a synthetic set with real images: conditional accuracy, distribution "
                       "metrics per class with subsampling CIs, and a memorisation audit against the training split; "
                       "the results go into the set's data card (card.md).")
    q.add_argument("real", help="run folder, or dataset: embryo | folder:PATH | csv:FILE | medmnist:FLAG")
    q.add_argument("synthetic", help="folder written by `synthmed sample` (images.npz), run folder, folder:/csv:")
    q.add_argument("--real-split", choices=["train", "val", "test"], help="real split to compare with (default test)")
    q.add_argument("--extractor", help="domain (default; trained on the real training split) | inception | "
                   "inception:WEIGHTS.pth | torchscript:MODEL.pt")
    q.add_argument("--n-boot", type=int,
                   help="subsamples (half of each set, without replacement) for the CIs (default 100)")
    q.add_argument("--k", type=int, help="k of the k-NN metrics (default 3)")
    q.add_argument("--lpips", action="store_true", help="also LPIPS (needs ImageNet backbone weights)")
    q.add_argument("--lpips-weights-dir", help="folder holding the LPIPS backbone weights file")
    q.add_argument("--no-memorisation", action="store_true", help="skip the memorisation audit")
    q.add_argument("--download", action="store_true", help="download MedMNIST files when missing (needs internet)")
    _add_data_run_flags(q)
    q.add_argument("--out", help="output folder (default: the synthetic folder); results go to OUT/evaluation/")
    q.set_defaults(func=cmd_evaluate)

    q = sub.add_parser("filter", help="keep synthetic images with realism score R >= threshold",
                       description="Realism-score filtering (Kynkaenniemi et al. 2019): keep synthetic images inside "
                       "the real training split's feature manifold; with --per-class, generate until N pass.")
    q.add_argument("source", help="run folder (its samples/ or, with --per-class, its generator) or an image set")
    q.add_argument("--real", help="real dataset (default: the run's data)")
    q.add_argument("--mode", choices=["class", "global"], default="class")
    q.add_argument("--threshold", type=float, default=1.0)
    q.add_argument("--k", type=int, default=3)
    q.add_argument("--per-class", type=int, help="generate until this many per class pass (needs a run folder)")
    q.add_argument("--budget-factor", type=float, default=10.0, help="generate at most this x the request per class")
    _add_data_run_flags(q)
    q.add_argument("--out", required=True, help="folder for the kept images and filter_report.json")
    q.set_defaults(func=cmd_filter)

    q = sub.add_parser("downstream", help="classifier protocols over subsets/seeds: does synthetic data help?",
                       description="Downstream protocols (baseline, traditional, mix, transfer, synthetic-only, "
                       "balance, ratio-sweep) x realism filters over k subsets or seeds, generators trained per "
                       "subset; mean ± std and paired differences with CIs; resumable.")
    _add_config_options(q, config_positional=True)
    q.add_argument("--protocols", help="comma list, e.g. baseline,traditional,mix,ratio-sweep")
    q.add_argument("--filters", help="comma list of none,global,class")
    q.add_argument("--subsets", type=int, help="k non-overlapping training subsets (0: repeat over seeds)")
    q.add_argument("--per-class", type=int, help="images per class in each subset")
    q.add_argument("--reuse-generator", action="store_true", help="one generator for all repeats (warned)")
    q.add_argument("--download", action="store_true")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_downstream)

    q = sub.add_parser("report", help="re-render report.html of a run", description="re-render report.html of a run")
    q.add_argument("run_dir")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_report)

    q = sub.add_parser("data", help="inspect, split or subset a dataset", description="inspect, split or subset a dataset")
    dsub = q.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    for action, help_ in (("inspect", "print classes, counts per split, patients, fingerprints"),
                          ("split", "write train/val/test image sets to --to"),
                          ("subset", "write small-data subsets of the training split to --to")):
        d = dsub.add_parser(action, help=help_, description=help_)
        _add_config_options(d)
        d.add_argument("--download", action="store_true")
        if action != "inspect":
            d.add_argument("--to", required=True, help="output folder")
        if action == "subset":
            d.add_argument("--per-class", type=int, help="images per class in each subset")
            d.add_argument("--k", type=int, default=1, help="number of non-overlapping subsets")
            d.add_argument("--fraction", type=float, help="fraction of the training split per subset (with --k)")
        d.set_defaults(func=cmd_data)

    q = sub.add_parser("presets", help="list presets, or show one", description="list presets, or show one")
    q.add_argument("--show", metavar="NAME")
    q.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- user errors become one line; --debug shows the traceback
        if args.debug or not _is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


def _is_user_error(e: Exception) -> bool:
    from synthmed.data.dataset import DataError
    from synthmed.generators.base import GeneratorError

    return isinstance(e, (ConfigError, DataError, GeneratorError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
