"""`synthmed` command line: a thin layer over the Python API (synthmed.pipeline, synthmed.data).

Every user mistake ends in one line ``error: <what> -- <how to fix>`` and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

import yaml

from synthmed import __version__
from synthmed.config import AT_LEAST_1, POSITIVE, ConfigError, Range, check_rule, check_type, load_config, preset_names, set_dotted

EXIT_USER_ERROR = 2


class UsageError(Exception):
    """A command line argparse cannot parse (unknown option, missing argument, bad value)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line the way every other user error is reported
    (one ``error:`` line, exit code 2) instead of printing the usage and exiting itself."""

    def error(self, message):
        raise UsageError(f"{message} -- see `{self.prog} --help`")


# --------------------------------------------------------------------------- shared options
#
# A flag that stands for a config key (``--steps`` is generator.sample_steps) is declared with
# `_config_flag`: its value is applied like ``--set KEY=VALUE`` before the config is loaded, so
# it is type- and range-checked by synthmed.config with every other value, before any work. The
# few flags that are no config key take their type from `_checked` (the same checks).


def _config_flag(p: argparse.ArgumentParser, *flags: str, key: str, text: bool = False, **kwargs) -> None:
    """``text``: the value is taken as it is typed (a path, a name), not parsed as YAML."""
    action = p.add_argument(*flags, **kwargs)
    keys = p.get_default("config_keys")
    if keys is None:
        keys = {}
        p.set_defaults(config_keys=keys)
    keys[action.dest] = (key, flags[0], text)


def _given_flags(args) -> dict[str, tuple[str, object, bool]]:
    """config key -> (flag, value, text) of the config flags on this command line."""
    return {key: (flag, getattr(args, dest), text)
            for dest, (key, flag, text) in (getattr(args, "config_keys", None) or {}).items()
            if getattr(args, dest, None) is not None}


def _checked(typ, rule=None):
    """argparse ``type=`` for a flag that is not a config key: YAML-parsed, then the config's checks."""
    def parse(text: str):
        try:
            value = check_type("value", yaml.safe_load(text), typ)
            check_rule("value", value, rule)
        except (ConfigError, yaml.YAMLError) as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value = ")) from None
        return value
    parse.__name__ = getattr(typ, "__name__", "value")
    return parse


def _comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _overrides_from_args(args) -> dict:
    """--set KEY=VALUE and the config flags given, as nested overrides."""
    overrides: dict = {}
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. generator.train_steps=500")
        key, val = item.split("=", 1)
        try:
            set_dotted(overrides, key.strip(), val)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "cannot be parsed"
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}) -- close brackets and "
                              "quotes, or quote text that holds : [ ] { } #") from None
    for key, (_flag, val, text) in _given_flags(args).items():
        set_dotted(overrides, key, val if isinstance(val, str) and not text else json.dumps(val))
    return overrides


@contextlib.contextmanager
def _naming_flags(args):
    """A config error about a key the user gave as a flag also names the flag."""
    try:
        yield
    except ConfigError as e:
        given = _given_flags(args)
        key = str(e).split(" ", 1)[0]
        if key in given:
            raise ConfigError(f"{given[key][0]}: {e}") from None
        raise


def _add_config_options(p: argparse.ArgumentParser, config_positional: bool = False) -> None:
    if config_positional:
        p.add_argument("config", nargs="?", help="YAML config file (keys as in `synthmed presets --show demo`)")
    p.add_argument("--preset", help=f"named preset: {', '.join(preset_names())}")
    _config_flag(p, "--dataset", key="data.dataset", text=True, help="embryo | folder:PATH | csv:PATH | medmnist:FLAG")
    _config_flag(p, "--data-root", key="data.data_root", text=True,
                 help="folder holding MedMNIST <flag>.npz files (default ~/.medmnist)")
    _config_flag(p, "--image-size", key="data.image_size", help="square image size every image is brought to")
    _config_flag(p, "--name", key="name", text=True, help="run name (folder under --out)")
    _config_flag(p, "--out", key="out_dir", text=True, help="parent folder of run folders (default runs)")
    _config_flag(p, "--seed", key="seed", help="run seed")
    _config_flag(p, "--device", key="device", choices=["auto", "cpu", "cuda"])
    _config_flag(p, "--threads", key="threads", help="torch CPU threads (default: the config's threads, 0 = all cores)")
    _config_flag(p, "--distributed", key="distributed", choices=["auto", "off", "on"],
                 help="under torchrun / accelerate launch: train and sample on all processes (docs/scale-out.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set generator.train_steps=500 (repeatable)")


def _config_from_args(args, default_preset: str | None = None):
    overrides = _overrides_from_args(args)
    config = getattr(args, "config", None)
    preset = args.preset or (None if config else default_preset)
    if args.dataset and args.dataset.startswith("medmnist:") and args.image_size is None and not config:
        # MedMNIST images are 28 px: keep them native unless the user asks otherwise
        overrides.setdefault("data", {}).setdefault("image_size", 28)
        if preset == "demo" and (overrides.get("generator") or {}).get("kind", "diffusion") == "diffusion":
            overrides.setdefault("generator", {}).setdefault("block_out_channels", [32, 64, 64])
    with _naming_flags(args):
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
    from synthmed import distributed

    if distributed.is_main():  # under torchrun: once, not once per process
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
    overrides = _overrides_from_args(args)
    with _naming_flags(args):  # the run's saved config, with --set and the flags on top, checked
        cfg = _load(run_dir / "config.yaml", overrides=overrides)
    set_threads(cfg.threads)
    from synthmed import distributed

    device = resolve_device(cfg.device)
    distributed.init(cfg.distributed, device)  # under torchrun: the ranks share out the chunks of images
    device = distributed.device_for(device)
    gen = pipeline.load_run_generator(run_dir, device=device)
    n = cfg.samples_per_class or 100
    folder = Path(args.out) if args.out else run_dir / "samples"
    g = cfg.generator
    # GAN kinds have no guidance, sampler or steps (their configs lack the keys): None = the generator's own
    guidance = getattr(g, "guidance", None)
    if "guidance" not in (overrides.get("generator") or {}) and pipeline.chosen_guidance(run_dir) is not None:
        guidance = pipeline.chosen_guidance(run_dir)  # the scale the run chose on its validation split
    pipeline.step_sample(cfg, run_dir, gen, [n] * len(gen.class_names), guidance=guidance,
                         seed=cfg.seed if args.seed is not None else None, folder=folder, quiet=args.quiet,
                         sampler=getattr(g, "sampler", None), steps=getattr(g, "sample_steps", None))
    if distributed.is_main():
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
    from synthmed.data.export import align_classes
    from synthmed.runtime import resolve_device, set_threads

    with _naming_flags(args):  # every value checked before any image is read
        cfg = pipeline.real_config(args.real, data_root=args.data_root, overrides=_overrides_from_args(args))
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    synthetic = pipeline.resolve_synthetic(args.synthetic)
    cfg, splits = pipeline.resolve_real(args.real, image_size=synthetic.image_size, channels=synthetic.channels,
                                        download=args.download, cfg=cfg)
    synthetic = align_classes(synthetic, splits.class_names, where=args.synthetic)
    ev = cfg.evaluate
    judge = pipeline.step_judge(cfg, splits, device, quiet=args.quiet)
    extractor = pipeline.feature_extractor(cfg, judge, device)
    # a set kept for a judge's confidence is graded by an independent classifier, never by that judge
    selected_by_confidence = (synthetic.meta.get("selection") or {}).get("mode") == "confidence"
    grader = pipeline.step_grader(cfg, splits, device, quiet=args.quiet) if selected_by_confidence else None
    out = Path(args.out) if args.out else _default_out(args.synthetic, "evaluation")
    result = pipeline.evaluate_synthetic(splits, synthetic, ev, judge, extractor, out, seed=cfg.seed,
                                         grader=grader, quiet=args.quiet)
    from synthmed.files import atomic_write_json

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
    from synthmed.data.export import align_classes, save_image_set
    from synthmed.files import atomic_write_json
    from synthmed.runtime import resolve_device, set_threads
    from synthmed.selection.confidence import confidence_filter, generate_until_confident
    from synthmed.selection.filter import filter_synthetic, generate_until

    run_dir = Path(args.source)
    is_run = (run_dir / "config.yaml").is_file() and (run_dir / "generator").is_dir()
    real_spec = args.real or (str(run_dir) if (run_dir / "config.yaml").is_file() else None)
    if real_spec is None:
        raise ValueError("--real DATASET is required: the real images whose feature manifold defines realism")
    with _naming_flags(args):  # every value checked before any image is read
        cfg = pipeline.real_config(real_spec, data_root=args.data_root, overrides=_overrides_from_args(args))
    if args.per_class is not None and not is_run:
        raise ValueError("--per-class generates until N images pass, which needs a run folder with a trained "
                         f"generator; {args.source} is not one")
    sel = cfg.select
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if is_run and args.per_class is not None:
        gen = pipeline.load_run_generator(run_dir, device=device)
        cfg, splits = pipeline.resolve_real(real_spec, image_size=gen.image_size, channels=gen.channels, cfg=cfg)
        judge = pipeline.step_judge(cfg, splits, device, quiet=args.quiet)
        seed = cfg.seed if args.seed is not None else cfg.seed + 1
        if sel.mode == "confidence":  # the selector: the run's judge, trained on the real training split
            kept, report = generate_until_confident(gen, judge.classifier, cfg.samples_per_class, tau=sel.tau,
                                                    budget_factor=sel.budget_factor, seed=seed, held_out=splits.val,
                                                    progress=not args.quiet)
        else:
            extractor = pipeline.feature_extractor(cfg, judge, device)
            kept, report = generate_until(gen, splits.train, extractor, cfg.samples_per_class, mode=sel.mode,
                                          threshold=sel.threshold, k=sel.k, budget_factor=sel.budget_factor,
                                          seed=seed, held_out=splits.val, progress=not args.quiet)
    else:
        synthetic = pipeline.resolve_synthetic(args.source)
        cfg, splits = pipeline.resolve_real(real_spec, image_size=synthetic.image_size,
                                            channels=synthetic.channels, cfg=cfg)
        synthetic = align_classes(synthetic, splits.class_names, where=args.source)
        judge = pipeline.step_judge(cfg, splits, device, quiet=args.quiet)
        if sel.mode == "confidence":
            kept, report = confidence_filter(synthetic, judge.classifier, sel.tau, held_out=splits.val)
        else:
            extractor = pipeline.feature_extractor(cfg, judge, device)
            kept, report = filter_synthetic(synthetic, splits.train, extractor, mode=sel.mode,
                                            threshold=sel.threshold, k=sel.k, held_out=splits.val)
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
        fix = ("); lower --tau" if sel.mode == "confidence" else
               "; typical for small classes in class mode); lower --threshold or use --mode global")
        print(f"warning: the filter rejects over 90% of the REAL validation images of {too_strict}: for these "
              f"classes it is too strict to tell good synthetic images from bad ({sel.mode} filter{fix}",
              file=sys.stderr)
    if sel.mode == "confidence":
        s = report["selector"]
        print(f"selected by the judge ({s['arch']} seed {s['seed']}, weights {s['weights_hash']}); `synthmed evaluate` "
              "scores this set's conditional accuracy with an independent grader, never with this judge")
    print(f"filtered set: {out.resolve()}")
    return 0


def cmd_downstream(args) -> int:
    from synthmed import pipeline

    cfg = _config_from_args(args)  # --protocols, --filters, ... are downstream.* keys, checked with the rest
    out, device = pipeline.prepare(cfg)
    splits = pipeline.step_data(cfg, out, download=args.download, quiet=args.quiet)
    result = pipeline.step_downstream_experiment(cfg, out, splits, device, quiet=args.quiet)
    if result.get("partial"):
        return 0
    pipeline.step_report(out, splits, quiet=args.quiet)
    print(f"downstream results: {(out / 'downstream').resolve()}; report: {(out / 'report.html').resolve()}")
    return 0


def _kind_values(items: list[str], flag: str, kinds: list[str]) -> dict[str, dict]:
    """``--family-set KIND.KEY=VALUE`` items as {kind: nested overrides}."""
    out: dict[str, dict] = {}
    for item in items:
        head, sep, val = item.partition("=")
        kind, dot, key = head.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"{flag} {item!r}: expected KIND.KEY=VALUE, e.g. r3gan.widths=[32,32]")
        if kind not in kinds:
            raise ConfigError(f"{flag} {item!r}: '{kind}' is not one of --generators ({', '.join(kinds)})")
        set_dotted(out.setdefault(kind, {}), key, val)
    return out


def cmd_compare(args) -> int:
    from synthmed.compare import compare_generators, family_generator_config

    cfg = _config_from_args(args)
    kinds = _comma_list(args.generators)
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"--generators {args.generators!r}: a kind is named twice")
    presets: dict[str, str] = {}
    for item in _comma_list(args.presets or ""):
        kind, sep, preset = item.partition("=")
        if not sep or kind.strip() not in kinds:
            raise ConfigError(f"--presets {item!r}: expected KIND=PRESET with KIND one of --generators "
                              f"({', '.join(kinds)})")
        presets[kind.strip()] = preset.strip()
    values = _kind_values(args.family_set, "--family-set", kinds)
    families = {k: family_generator_config(cfg, k, presets.get(k), values.get(k)) for k in kinds}
    out = Path(cfg.out_dir) / cfg.name
    compare_generators(cfg, families, minutes=args.minutes, downstream=not args.no_downstream, quiet=args.quiet)
    print(f"comparison: {(out / 'comparison.md').resolve()}; report: {(out / 'report.html').resolve()}")
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
    from synthmed.runtime import set_threads

    cfg = _config_from_args(args)
    set_threads(cfg.threads)
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


def cmd_data_crops(args) -> int:
    import warnings

    from synthmed.data.crops import SKIP_REASONS, crop_boxes

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = crop_boxes(args.boxes, args.images, args.to, classes=classes, min_size=args.min_size, pad=args.pad,
                         square=args.square, patient_column=args.patient_column)
    print(f"{rep['total_written']} crop(s) from {rep['boxes_read']} box(es) in {rep['images_with_boxes']} image(s); "
          f"patient_id = {rep['patients']}")
    for name, n in rep["written"].items():
        print(f"  {name}: {n}")
    skipped = {k: v for k, v in rep["skipped"].items() if v}
    if skipped:
        parts = []
        for reason, n in skipped.items():
            detail = (" (" + ", ".join(f"{c}={k}" for c, k in rep["other_class"].items()) + ")"
                      if reason == "other_class" else "")
            parts.append(f"{n} {SKIP_REASONS[reason]}{detail}")
        print(f"skipped {sum(skipped.values())} box(es): " + "; ".join(parts))
        for s in rep["skipped_boxes"][:5]:
            print(f"  {s['where']}: {s['label']} {tuple(s['box'])} {s['reason']}")
        if len(rep["skipped_boxes"]) > 5:
            print(f"  ... {len(rep['skipped_boxes']) - 5} more in crops_report.json")
    if rep["clipped"]:
        print(f"clipped to the image border (kept): {len(rep['clipped'])} box(es)")
    if rep["annotations_without_boxes"]:
        print(f"annotation file(s) with no box: {len(rep['annotations_without_boxes'])} "
              f"({', '.join(rep['annotations_without_boxes'][:5])})")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"written: {rep['manifest']} (use --dataset csv:{rep['manifest']})")
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


def cmd_study(args) -> int:
    from synthmed.study import require_extra

    require_extra()
    if args.study_verb == "create":
        from synthmed.study.create import create_study

        made = create_study(args.to, args.real, args.synthetic, readers=args.readers, per_source=args.per_source,
                            mode=args.mode, criteria=args.criteria, real_split=args.real_split,
                            show_class=not args.hide_class, seed=args.seed, base_url=args.base_url,
                            data_root=args.data_root)
        s = made.summary
        print(f"study: {made.folder.resolve()} ({s['num_images']} images: "
              + ", ".join(f"{src['name']} {src['n']}" for src in s["sources"])
              + f"; real images from the {s['real']['split']} split; mode {s['mode']})")
        print("private links (shown only now; the study keeps only their hashes; `synthmed study link` issues a new one):")
        for reader, link in made.links.items():
            print(f"  {reader}: {link}")
        print(f"  admin (progress): {made.admin_link}")
        print(f"next: synthmed study serve {args.to}")
        return 0
    if args.study_verb == "serve":
        from synthmed.study.app import serve

        serve(args.study, host=args.host, port=args.port)
        return 0
    if args.study_verb == "link":
        from synthmed.study import db

        with db.connect(args.study) as con:
            token = db.reissue_token(con, args.reader)
        print(f"{args.reader}: {args.base_url.rstrip('/')}/r/{token}  (the old link no longer works; answers are kept)")
        return 0
    from synthmed.study.analyze import analyze_study

    out = Path(args.out) if args.out else Path(args.study) / "analysis"
    result = analyze_study(args.study, out)
    t = result.get("turing")
    if t:
        k, m = t["kappa_vs_truth"], t["majority_vote"]
        for p in t["per_reader"]:
            acc = "-" if p["accuracy"] is None else f"{p['accuracy']:.3f}"
            kap = "-" if p["kappa"] is None else f"{p['kappa']:+.2f}"
            pv = "-" if p["p_value_vs_chance"] is None else f"{p['p_value_vs_chance']:.3g}"
            print(f"{p['reader']:>12}: {p['correct']}/{p['n']} correct, accuracy {acc} (binomial p {pv}), kappa {kap}")
        if k["n"]:
            print(f"kappa vs truth: mean {k['mean']:+.2f}, min {k['min']:+.2f}, max {k['max']:+.2f}; "
                  f"majority vote {m['correct']}/{m['n']} correct ({m['ties']} ties)")
    p = result.get("plausibility")
    if p:
        overall = p["by_class"][-1]
        print("plausible fraction: " + ", ".join(
            f"{s} {overall[s]['rate']:.2f} ({overall[s]['k']}/{overall[s]['n']})" if overall[s]["n"] else f"{s} -"
            for s in p["sources"]))
    if not result["complete"]:
        print("warning: not every reader has finished; these numbers cover the answers so far", file=sys.stderr)
    print(f"analysis: {out.resolve()} (reader_study.html, analysis.json, answers.csv, ...)")
    return 0


# --------------------------------------------------------------------------- parser


def _add_training_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in the run folder")
    q.add_argument("--download", action="store_true", help="download MedMNIST files when missing (needs internet)")
    q.add_argument("--quiet", action="store_true", help="no progress output")


def _add_data_run_flags(q: argparse.ArgumentParser) -> None:
    """Options of the verbs that work on existing images (evaluate, filter)."""
    q.add_argument("--data-root", help="folder holding MedMNIST <flag>.npz files")
    _config_flag(q, "--seed", key="seed", help="seed (bootstrap, sampling)")
    _config_flag(q, "--device", key="device", choices=["auto", "cpu", "cuda"])
    _config_flag(q, "--threads", key="threads", help="torch CPU threads (default: the config's threads, 0 = all cores)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the real data's config, e.g. --set evaluate.judge.epochs=5")
    q.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="synthmed", description="Synthetic medical images for small, imbalanced "
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
    _config_flag(q, "--per-class", key="samples_per_class",
                 help="images per class (default: the config's samples_per_class)")
    _config_flag(q, "--guidance", key="generator.guidance",
                 help="classifier-free guidance scale (1 = conditional only)")
    _config_flag(q, "--steps", key="generator.sample_steps", help="sampler steps")
    _config_flag(q, "--sampler", key="generator.sampler", choices=["dpmsolver++", "ddim", "ddpm"])
    _config_flag(q, "--seed", key="seed", help="sampling seed (default: the run's seed + 1)")
    q.add_argument("--out", help="output folder (default RUN_DIR/samples)")
    _config_flag(q, "--device", key="device", choices=["auto", "cpu", "cuda"])
    _config_flag(q, "--threads", key="threads", help="torch CPU threads (default: the run's threads, 0 = all cores)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the run's saved config, e.g. --set generator.guidance=1.5 (repeatable)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_sample)

    q = sub.add_parser("evaluate", help="FID/KID/precision/recall/density/coverage/SSIM per class, memorisation audit",
                       description="Compare a synthetic set with real images: conditional accuracy, distribution "
                       "metrics per class with subsampling CIs, and a memorisation audit against the training split; "
                       "the results go into the set's data card (card.md).")
    q.add_argument("real", help="run folder, or dataset: embryo | folder:PATH | csv:FILE | medmnist:FLAG")
    q.add_argument("synthetic", help="folder written by `synthmed sample` (images.npz), run folder, folder:/csv:")
    _config_flag(q, "--real-split", key="evaluate.real_split", choices=["train", "val", "test"],
                 help="real split to compare with (default test)")
    _config_flag(q, "--extractor", key="evaluate.extractor", text=True,
                 help="domain (default; trained on the real training split) | inception | "
                 "inception:WEIGHTS.pth | torchscript:MODEL.pt")
    _config_flag(q, "--n-boot", key="evaluate.n_boot", help="subsamples (half of each set, without replacement) for the CIs (default 100)")
    _config_flag(q, "--k", key="evaluate.k", help="k of the k-NN metrics (default 3)")
    _config_flag(q, "--lpips", key="evaluate.lpips", action="store_const", const=True,
                 help="also LPIPS (needs ImageNet backbone weights)")
    _config_flag(q, "--lpips-weights-dir", key="evaluate.lpips_weights_dir", text=True,
                 help="folder holding the LPIPS backbone weights file")
    _config_flag(q, "--no-memorisation", key="evaluate.memorisation", action="store_const", const=False,
                 help="skip the memorisation audit")
    q.add_argument("--download", action="store_true", help="download MedMNIST files when missing (needs internet)")
    _add_data_run_flags(q)
    q.add_argument("--out", help="output folder (default: the synthetic folder); results go to OUT/evaluation/")
    q.set_defaults(func=cmd_evaluate)

    q = sub.add_parser("filter", help="keep synthetic images with realism score R >= threshold, or p >= tau",
                       description="Realism-score filtering (Kynkaenniemi et al. 2019): keep synthetic images inside "
                       "the real training split's feature manifold; or (--mode confidence) keep those whose intended "
                       "class gets p >= tau under the judge trained on the real training split; with --per-class, "
                       "generate until N pass.")
    q.add_argument("source", help="run folder (its samples/ or, with --per-class, its generator) or an image set")
    q.add_argument("--real", help="real dataset (default: the run's data)")
    _config_flag(q, "--mode", key="select.mode", choices=["class", "global", "confidence"], default="class",
                 help="class / global: realism filter; confidence: the judge's p(intended class) >= --tau")
    _config_flag(q, "--threshold", key="select.threshold", default=1.0, help="keep images with realism R >= this")
    _config_flag(q, "--tau", key="select.tau", help="--mode confidence: keep images with p(intended class) >= this "
                 "(default: the config's select.tau, 0.9)")
    _config_flag(q, "--k", key="select.k", default=3, help="k of the k-NN realism score")
    _config_flag(q, "--per-class", key="samples_per_class",
                 help="generate until this many per class pass (needs a run folder)")
    _config_flag(q, "--budget-factor", key="select.budget_factor", default=10.0,
                 help="generate at most this x the request per class")
    _add_data_run_flags(q)
    q.add_argument("--out", required=True, help="folder for the kept images and filter_report.json")
    q.set_defaults(func=cmd_filter)

    q = sub.add_parser("compare", help="generator families on the same data at equal wall time",
                       description="Train generator families (e.g. diffusion, r3gan, progan) on the same real training "
                       "split for the same minutes each, then score them alike: FD next to the real floor, precision / "
                       "recall / coverage, conditional accuracy, the mode-collapse guard, sampling speed and the "
                       "downstream gain; one table (comparison.md/.json) and one report section. Resumable.")
    _add_config_options(q, config_positional=True)
    q.add_argument("--generators", default="diffusion,r3gan,progan", help="comma list of generator kinds")
    q.add_argument("--presets", help="KIND=PRESET,... the settings of a family (default: the run's own generator "
                   "for its kind, else diffusion=pixel28, r3gan=r3gan28, progan=progan28)")
    q.add_argument("--family-set", action="append", default=[], metavar="KIND.KEY=VALUE",
                   help="override one family's generator setting, e.g. --family-set r3gan.widths=[32,32] (repeatable)")
    q.add_argument("--minutes", type=_checked(float, POSITIVE), default=10.0,
                   help="training wall time of every family (default 10)")
    q.add_argument("--no-downstream", action="store_true", help="skip the downstream real vs real + synthetic "
                   "classifiers")
    q.add_argument("--quiet", action="store_true", help="no progress output")
    q.set_defaults(func=cmd_compare)

    q = sub.add_parser("downstream", help="classifier protocols over subsets/seeds: does synthetic data help?",
                       description="Downstream protocols (baseline, traditional, mix, transfer, synthetic-only, "
                       "balance, ratio-sweep) x realism filters over k subsets or seeds, generators trained per "
                       "subset; mean ± std and paired differences with CIs; resumable.")
    _add_config_options(q, config_positional=True)
    _config_flag(q, "--protocols", key="downstream.protocols", type=_comma_list,
                 help="comma list, e.g. baseline,traditional,mix,ratio-sweep")
    _config_flag(q, "--filters", key="downstream.filters", type=_comma_list,
                 help="comma list of none,global,class,confidence")
    _config_flag(q, "--subsets", key="downstream.subsets",
                 help="k non-overlapping training subsets (0: repeat over seeds)")
    _config_flag(q, "--per-class", key="downstream.subset_per_class", help="images per class in each subset")
    _config_flag(q, "--workers", key="downstream.workers", help="local processes running a repeat's cells in parallel")
    _config_flag(q, "--shard", key="downstream.shard", text=True,
                 help="K/N: only repeats i %% N == K (one task of a job array, docs/scale-out.md)")
    _config_flag(q, "--reuse-generator", key="downstream.reuse_generator", action="store_const", const=True,
                 help="one generator for all repeats (warned)")
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
            d.add_argument("--per-class", type=_checked(int, AT_LEAST_1), help="images per class in each subset")
            d.add_argument("--k", type=_checked(int, AT_LEAST_1), default=1, help="number of non-overlapping subsets")
            d.add_argument("--fraction", type=_checked(float, Range(0, 1, lo_open=True)),
                           help="fraction of the training split per subset (with --k)")
        d.set_defaults(func=cmd_data)
    help_ = "one crop per box of a VOC folder or box CSV, labelled by the box's name, to --to"
    d = dsub.add_parser("crops", help=help_, description=help_ + "; writes <class>/*.png, manifest.csv (for csv:) "
                        "and crops_report.json. Box CSV columns: image,label,x0,y0,x1,y1[,patient_id].")
    d.add_argument("--boxes", required=True, help="folder of Pascal VOC .xml files, or a box CSV")
    d.add_argument("--images", required=True, help="folder holding the images the boxes refer to")
    d.add_argument("--to", required=True, help="output folder (new or empty)")
    d.add_argument("--classes", help="comma list of box names to keep (default: all); others are counted and skipped")
    d.add_argument("--min-size", type=int, default=0, metavar="PX", help="skip boxes whose short side is under PX")
    d.add_argument("--pad", type=float, default=0.0, metavar="FRACTION",
                   help="widen each box by this fraction per side")
    d.add_argument("--square", action="store_true", help="square crops (short side widened to the long one)")
    d.add_argument("--patient-column", help="box CSV column with patient ids (default patient_id if present, "
                   "else the source image)")
    d.set_defaults(func=cmd_data_crops)

    q = sub.add_parser("study", help="reader study: real-or-synthetic and plausibility rating in a browser",
                       description="A reader study in three commands: create (pick images, one private link per "
                       "reader), serve (the web app, SQLite), analyze (kappa, binomial tests, plausibility). Needs "
                       "the 'study' extra: pip install -e '.[study]'. See docs/reader-study.md.")
    ssub = q.add_subparsers(dest="study_verb", metavar="ACTION", required=True)
    d = ssub.add_parser("create", help="pick images, write the study folder, print one link per reader",
                        description="Pick --per-source images from the real split and from each synthetic set "
                        "(stratified by class, seeded), copy them under opaque ids into --to, write the SQLite "
                        "database and print one private link per reader.")
    d.add_argument("--real", required=True, help="run folder, or dataset: embryo | folder:PATH | csv:FILE | medmnist:FLAG")
    d.add_argument("--synthetic", action="append", required=True, metavar="[NAME=]SAMPLES",
                   help="synthetic image set (folder with images.npz, run folder); repeat for several generators")
    d.add_argument("--per-source", type=_checked(int, AT_LEAST_1), required=True,
                   help="images from each source (the real split and each synthetic set)")
    d.add_argument("--readers", type=_comma_list, required=True, help="comma list of reader names, e.g. r1,r2,r3")
    d.add_argument("--mode", choices=["turing", "plausibility", "both"], default="turing",
                   help="turing: real or synthetic + confidence 1-5; plausibility: the class's criteria; both")
    d.add_argument("--criteria", help="YAML: class: [criterion, ...] (all: [...] for every class); plausibility modes")
    d.add_argument("--real-split", choices=["test", "val"], default="test", help="real split shown (default test)")
    d.add_argument("--hide-class", action="store_true", help="do not show the class (turing mode)")
    d.add_argument("--seed", type=_checked(int, Range(0)), default=0, help="picks the images and each reader's order")
    d.add_argument("--base-url", default="http://127.0.0.1:8000", help="address readers will open (for the links)")
    d.add_argument("--data-root", help="folder holding MedMNIST <flag>.npz files")
    d.add_argument("--to", required=True, help="new study folder")
    d = ssub.add_parser("serve", help="serve the study web app", description="Serve the study (127.0.0.1 unless "
                        "--host says otherwise; another host is warned about).")
    d.add_argument("study", help="study folder")
    d.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    d.add_argument("--port", type=_checked(int, Range(1, 65535)), default=8000)
    d = ssub.add_parser("analyze", help="tables, CSV / JSON export and an HTML report section",
                        description="Per reader accuracy (binomial test), sensitivity, specificity, Cohen's kappa; "
                        "Fleiss' kappa, majority vote, per-image correctness; plausible fraction per class and source.")
    d.add_argument("study", help="study folder")
    d.add_argument("--out", help="output folder (default STUDY/analysis)")
    d = ssub.add_parser("link", help="issue a new private link for one reader (the old one stops working)",
                        description="issue a new private link for one reader (the old one stops working)")
    d.add_argument("study", help="study folder")
    d.add_argument("--reader", required=True)
    d.add_argument("--base-url", default="http://127.0.0.1:8000")
    q.set_defaults(func=cmd_study)

    q = sub.add_parser("presets", help="list presets, or show one", description="list presets, or show one")
    q.add_argument("--show", metavar="NAME")
    q.set_defaults(func=cmd_presets)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Each warning as one line ``warning: <message>`` on stderr: no source path, no code line."""
    text = " ".join(str(message).split())
    kind = "" if issubclass(category, UserWarning) else f"{category.__name__}: "
    from tqdm.auto import tqdm

    # a warning given during training (a time estimate) gets its own line above the progress bar
    tqdm.write(f"warning: {kind}{text}", file=file or sys.stderr)


@contextlib.contextmanager
def _readable_warnings():
    saved = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield
    finally:
        warnings.showwarning = saved


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        with _readable_warnings():
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

    return isinstance(e, (ConfigError, DataError, GeneratorError, FileNotFoundError, FileExistsError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
