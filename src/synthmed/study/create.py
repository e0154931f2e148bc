"""Create a reader study: pick real and synthetic images, copy them under opaque ids, write the
database, hand out one private link per reader.

Real images come from a split the generator never saw (``test`` by default, or ``val``); the study
records which, and refuses a synthetic set whose generator was trained on that very split. Every
source (the real split and each synthetic set) contributes the same number of images per class, so
neither the class mix nor the count says where an image came from; each reader sees every image,
in their own seeded random order.

    from synthmed.study.create import create_study
    made = create_study("studies/demo", real="runs/demo", synthetic=["runs/demo/samples"],
                        readers=["r1", "r2"], per_source=20)
    made.links   # {"r1": "http://127.0.0.1:8000/r/<token>", ...}; only hashes are stored
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from synthmed import __version__
from synthmed.data.dataset import DataError, DataSplits, ImageDataset
from synthmed.files import atomic_write_json
from synthmed.study import db

MODES = ("turing", "plausibility", "both")
REAL_SPLITS = ("test", "val")
REAL_SOURCE = "real"
READER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# criteria given under this key apply to every class (before the class's own)
ALL_CLASSES_KEY = "all"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


@dataclass
class StudySettings:
    readers: list[str]  # reader names (letters, digits, _ . @ -), one private link each
    per_source: int = 20  # images from each source (the real split and each synthetic set), stratified by class
    mode: str = "turing"  # turing: real or synthetic + confidence; plausibility: criteria checkboxes; both
    show_class: bool = True  # show each image's class (plausibility needs it: criteria are per class)
    real_split: str = "test"  # the real split shown: test or val, never the generator's training split
    seed: int = 0  # picks the images and every reader's order
    base_url: str = DEFAULT_BASE_URL  # where `synthmed study serve` will be reached, for the printed links
    criteria: dict[str, list[str]] = field(default_factory=dict)  # class -> criteria, all must hold (plausibility)

    def check(self, class_names: list[str] | None = None) -> None:
        if not self.readers:
            raise ValueError("--readers: give at least one reader name, e.g. --readers r1,r2,r3")
        bad = [r for r in self.readers if not READER_NAME.match(r)]
        if bad:
            raise ValueError(f"--readers: names {bad} may hold only letters, digits and _ . @ - (at most 64)")
        twice = sorted({r for r in self.readers if self.readers.count(r) > 1})
        if twice:
            raise ValueError(f"--readers: {twice} given more than once; each reader needs their own name")
        if not isinstance(self.per_source, int) or self.per_source < 1:
            raise ValueError(f"--per-source = {self.per_source}: must be an integer >= 1")
        if self.mode not in MODES:
            raise ValueError(f"--mode = {self.mode!r}: must be one of {', '.join(MODES)}")
        if self.real_split not in REAL_SPLITS:
            raise ValueError(f"--real-split = {self.real_split!r}: must be test or val (the generator trained on train)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed = {self.seed}: must be an integer >= 0")
        if self.mode != "turing":
            if not self.show_class:
                raise ValueError("--hide-class: plausibility criteria are per class, so the class must be shown; "
                                 "use --mode turing to hide it")
            if not self.criteria:
                raise ValueError(f"--mode {self.mode} needs --criteria criteria.yaml (class: [criterion, ...])")
            if class_names is not None:
                missing = [c for c in class_names if not self.criteria.get(c)]
                if missing:
                    raise ValueError(f"--criteria: no criteria for class(es) {missing}; give each class a list, "
                                     f"or common ones under '{ALL_CLASSES_KEY}:'")


@dataclass
class StudyCreated:
    folder: Path
    links: dict[str, str]  # reader -> private link (shown once; the database holds only hashes)
    admin_link: str
    summary: dict


def load_criteria(source, class_names: list[str] | None = None) -> dict[str, list[str]]:
    """Criteria per class from a YAML file (or a dict): ``class: [criterion, ...]``; those under
    ``all:`` apply to every class, before its own. Unknown class names are an error."""
    where = str(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"--criteria {path}: no such file")
        try:
            source = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"--criteria {path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(source, dict) or not source:
        raise ValueError(f"--criteria {where}: expected a mapping class: [criterion, ...]")
    out: dict[str, list[str]] = {}
    for key, items in source.items():
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and i.strip() for i in items):
            raise ValueError(f"--criteria {where}: '{key}' needs a non-empty list of criteria (text)")
        out[str(key)] = [i.strip() for i in items]
    common = out.pop(ALL_CLASSES_KEY, [])
    if class_names is not None:
        unknown = [k for k in out if k not in class_names]
        if unknown:
            raise ValueError(f"--criteria {where}: class(es) {unknown} are not in the data; classes: {class_names}")
        return {c: common + [i for i in out.get(c, []) if i not in common] for c in class_names
                if common or out.get(c)}
    return out if not common else {ALL_CLASSES_KEY: common, **out}


def per_class_counts(per_source: int, num_classes: int, seed: int) -> list[int]:
    """``per_source`` spread over the classes as evenly as possible; the remainder goes to classes
    picked at random (seeded), so no class is favoured by its position."""
    counts = [per_source // num_classes] * num_classes
    extra = np.random.default_rng([seed, 17]).permutation(num_classes)[: per_source % num_classes]
    for c in extra:
        counts[int(c)] += 1
    return counts


def _pick(ds: ImageDataset, counts: list[int], rng: np.random.Generator, source: str) -> np.ndarray:
    have = ds.class_counts()
    short = [f"{ds.class_names[c]} ({have[c]} < {n})" for c, n in enumerate(counts) if have[c] < n]
    if short:
        raise DataError(f"{source}: too few images for {per_source_text(counts)}: {', '.join(short)}; "
                        "lower --per-source, or sample more (synthmed sample --per-class N)")
    picked = [rng.choice(np.flatnonzero(ds.labels == c), size=n, replace=False) for c, n in enumerate(counts)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def per_source_text(counts: list[int]) -> str:
    return f"{sum(counts)} per source ({'/'.join(map(str, counts))} per class)"


def _source_name(spec: str, taken: set[str]) -> tuple[str, str]:
    """(name, path) of a ``--synthetic`` value: ``NAME=PATH``, or a name from the path (a run's
    samples folder is named after the run)."""
    name, path = (spec.split("=", 1) if re.match(r"^[A-Za-z0-9_.-]+=", spec) else (None, spec))
    if name is None:
        p = Path(path.split(":", 1)[1] if path.startswith(("folder:", "csv:")) else path)
        name = p.parent.name if p.name == "samples" else p.name
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "synthetic"
    elif name in taken:
        raise ValueError(f"--synthetic {spec}: the name {name!r} is used twice")
    base, k = name, 2
    while name in taken or name == REAL_SOURCE:
        name, k = f"{base}-{k}", k + 1
    return name, path


def _save_png(img: np.ndarray, path: Path) -> None:
    # every image through the same encoder with the same settings and no metadata: file size,
    # format and headers say nothing about where an image came from
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path, format="PNG", compress_level=6)


def _generator_check(name: str, meta: dict, splits: DataSplits, split: str) -> dict:
    """Whether this synthetic set's generator could have seen the real images shown."""
    trained_on = meta.get("train_fingerprint")
    shown = getattr(splits, split).fingerprint()
    if trained_on and trained_on == shown:
        raise DataError(f"--synthetic {name}: its generator was trained on the {split} split shown as real "
                        f"(fingerprint {shown}); show the other split (--real-split) or use another generator")
    if trained_on and trained_on == splits.train.fingerprint():
        return {"status": "verified", "trained_on": trained_on,
                "detail": f"trained on this dataset's training split; the {split} split is disjoint from it"}
    warnings.warn(f"study: cannot confirm that the generator of '{name}' never saw the real {split} images "
                  f"(its training-split fingerprint is {trained_on or 'not recorded'}, this dataset's training split is "
                  f"{splits.train.fingerprint()}); create the study from the run the samples came from")
    return {"status": "unconfirmed", "trained_on": trained_on,
            "detail": "the set does not record a training split matching this dataset's"}


def _resolve_real(real, image_size: int, channels: int, data_root: str | None) -> tuple[DataSplits, dict]:
    if isinstance(real, DataSplits):
        return real, {"spec": real.source}
    from synthmed import pipeline

    _, splits = pipeline.resolve_real(str(real), image_size=image_size, channels=channels, data_root=data_root)
    return splits, {"spec": str(real)}


def _resolve_synthetic(synthetic) -> list[tuple[str, str, ImageDataset]]:
    items = list(synthetic.items()) if isinstance(synthetic, dict) else list(synthetic)
    if not items:
        raise ValueError("--synthetic: give at least one synthetic image set")
    out, taken = [], set()
    for item in items:
        if isinstance(item, tuple):
            name, ds = item
            if isinstance(ds, (str, Path)):
                name, path = _source_name(f"{name}={ds}", taken)
                ds = None
            else:
                path = ds.name
        else:
            name, path = _source_name(str(item), taken)
            ds = None
        if ds is None:
            from synthmed import pipeline

            ds = pipeline.resolve_synthetic(path)
        taken.add(name)
        out.append((name, str(path), ds))
    sizes = {(d.image_size, d.channels) for _, _, d in out}
    if len(sizes) > 1:
        raise DataError(f"--synthetic: the sets differ in image size/channels {sorted(sizes)}; a reader would tell "
                        "them apart by size alone -- sample them at one size")
    return out


def create_study(to: str | Path, real, synthetic, *, readers: list[str], per_source: int = 20,
                 mode: str = "turing", criteria=None, real_split: str = "test", show_class: bool = True,
                 seed: int = 0, base_url: str = DEFAULT_BASE_URL, data_root: str | None = None) -> StudyCreated:
    """Write a study folder at ``to`` (which must not exist yet) and return the readers' links.

    ``real``: a run folder, a dataset spec (embryo, folder:PATH, csv:FILE, medmnist:FLAG) or DataSplits.
    ``synthetic``: a list of image-set folders / run folders (``NAME=PATH`` names one), or of
    (name, ImageDataset) pairs, or a dict name -> either."""
    settings = StudySettings(readers=list(readers), per_source=per_source, mode=mode, show_class=show_class,
                             real_split=real_split, seed=seed, base_url=base_url.rstrip("/"))
    if settings.mode != "turing" and criteria is not None:
        settings.criteria = load_criteria(criteria)  # the file is checked before any image is read
    settings.check()
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise FileExistsError(f"--to {to}: exists and is not empty; a study is written once into a new folder")
    sets = _resolve_synthetic(synthetic)
    first = sets[0][2]
    splits, real_info = _resolve_real(real, first.image_size, first.channels, data_root)
    class_names = list(splits.class_names)
    from synthmed.data.export import align_classes

    sets = [(n, p, align_classes(d, class_names, where=f"--synthetic {p}")) for n, p, d in sets]
    if settings.mode != "turing":
        settings.criteria = load_criteria(criteria, class_names)
    settings.check(class_names)
    shown = getattr(splits, settings.real_split)
    checks = {name: _generator_check(name, d.meta, splits, settings.real_split) for name, _, d in sets}

    counts = per_class_counts(settings.per_source, len(class_names), settings.seed)
    sources = [(REAL_SOURCE, f"{real_info['spec']} ({settings.real_split} split)", shown)] + sets
    picks = [(name, path, ds, _pick(ds, counts, np.random.default_rng([settings.seed, 1, k]), name))
             for k, (name, path, ds) in enumerate(sources)]

    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{to.name}.", dir=to.parent))
    try:
        links, admin_token, summary = _write(tmp, settings, class_names, counts, picks, splits, real_info, checks)
        if to.exists():
            to.rmdir()
        os.replace(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    base = settings.base_url
    return StudyCreated(folder=to, links={r: f"{base}/r/{t}" for r, t in links.items()},
                        admin_link=f"{base}/a/{admin_token}", summary=summary)


def _write(folder: Path, s: StudySettings, class_names, counts, picks, splits: DataSplits, real_info: dict,
           checks: dict) -> tuple[dict[str, str], str, dict]:
    (folder / "images").mkdir()
    rows = []
    for name, _path, ds, idx in picks:
        for i in idx:
            img = ds.images[i]
            rows.append((name, int(name != REAL_SOURCE), int(ds.labels[i]), int(i),
                         hashlib.sha1(img.tobytes()).hexdigest(), img))
    # stored in a random order: not even the database's row order follows the source
    order = np.random.default_rng([s.seed, 2]).permutation(len(rows))
    con = db.create(folder)
    try:
        image_ids = []
        with db.transaction(con):
            for j in order:
                name, synthetic, label, origin, digest, img = rows[j]
                image_id = db.new_image_id()
                _save_png(img, folder / "images" / f"{image_id}.png")
                con.execute("INSERT INTO images (id, file, source, synthetic, class_index, class_name, origin_index, "
                            "fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (image_id, f"{image_id}.png", name, synthetic, label, class_names[label], origin, digest))
                image_ids.append(image_id)
            tokens = {}
            for k, reader in enumerate(s.readers):
                reader_id, tokens[reader] = db.add_reader(con, reader)
                perm = np.random.default_rng([s.seed, 3, k]).permutation(len(image_ids))
                con.executemany("INSERT INTO tasks (reader_id, image_id, position) VALUES (?, ?, ?)",
                                [(reader_id, image_ids[j], pos) for pos, j in enumerate(perm)])
            admin_token = db.new_token()
            summary = {
                "synthmed_version": __version__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "mode": s.mode, "show_class": s.show_class, "seed": s.seed, "per_source": s.per_source,
                "per_class": dict(zip(class_names, counts)), "class_names": class_names,
                "criteria": s.criteria if s.mode != "turing" else {},
                "image_shape": list(picks[0][2].images.shape[1:]), "num_images": len(image_ids),
                "readers": list(s.readers),
                "real": {**real_info, "split": s.real_split, "dataset": splits.source,
                         "split_policy": splits.split_policy, "fingerprint": getattr(splits, s.real_split).fingerprint(),
                         "train_fingerprint": splits.train.fingerprint()},
                "sources": [{"name": name, "synthetic": name != REAL_SOURCE, "path": path, "n": int(len(idx)),
                             "set_fingerprint": ds.fingerprint(),
                             **({"generator_check": checks[name]} if name in checks else {})}
                            for name, path, ds, idx in picks],
            }
            for key, value in summary.items():
                db.set_meta(con, key, value)
            db.set_meta(con, "csrf_secret", secrets.token_hex(32))
            db.set_meta(con, "admin_token_hash", db.hash_token(admin_token))
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    # what the study is, for people (no tokens, no secret, no per-image truth)
    atomic_write_json(summary, folder / "study.json")
    return tokens, admin_token, summary
