"""Analyse a reader study: tables, CSV / JSON export and an HTML report section.

Turing answers (real or synthetic; synthetic = positive):
- per reader: accuracy with its exact interval and an exact two-sided binomial test against 0.5,
  sensitivity (synthetic images called synthetic), specificity (real called real), Cohen's kappa
  against the truth, the AUC of the signed confidence (+c for "synthetic", -c for "real"), time per image;
- across readers: mean / min / max kappa, Fleiss' kappa over the images every reader answered,
  pairwise Cohen's kappa, the majority vote's accuracy (ties counted apart), and the pooled accuracy
  (every answer as one trial: answers of one reader are not independent, so read its p-value with care);
- per image: the fraction of readers correct; the synthetic images that fooled most readers as a grid;
- per source: the fraction of answers calling its images synthetic.

Plausibility (an image is plausible only if every criterion of its class is ticked): the plausible
fraction per class and source with exact intervals, sources side by side (real images are the
reference: what a perfect generator would get), per reader, and the failure count of every criterion.
"""

from __future__ import annotations

import base64
import csv
import math
from collections import defaultdict
from html import escape
from pathlib import Path

from synthmed.files import atomic_write_json, atomic_write_text
from synthmed.study import db
from synthmed.study.stats import (auc, binomial_test, cohen_kappa, fleiss_kappa, pairwise_kappas, proportion_ci,
                                  summary)

FOOLED_SHOWN = 16  # synthetic images in the "fooled most readers" grid


def _rate(k: int, n: int) -> dict:
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else None, "ci95": proportion_ci(k, n)}


def turing_analysis(answers: list[dict], readers: list[str]) -> dict:
    """The Turing statistics of answer rows (as :func:`synthmed.study.db.answer_rows` gives them)."""
    rows = [a for a in answers if a["says_synthetic"] is not None]
    by_reader: dict[str, list[dict]] = defaultdict(list)
    for a in rows:
        by_reader[a["reader"]].append(a)
    per_reader = []
    for r in readers:
        mine = by_reader.get(r, [])
        truth = [a["synthetic"] for a in mine]
        said = [a["says_synthetic"] for a in mine]
        correct = sum(t == s for t, s in zip(truth, said))
        tp = sum(t == 1 and s == 1 for t, s in zip(truth, said))
        tn = sum(t == 0 and s == 0 for t, s in zip(truth, said))
        n_syn, n_real = sum(truth), len(truth) - sum(truth)
        signed = [(a["confidence"] or 0) * (1 if a["says_synthetic"] else -1) for a in mine]
        secs = [a["seconds"] for a in mine if a["seconds"] is not None]
        per_reader.append({
            "reader": r, "n": len(mine), "correct": correct,
            "accuracy": correct / len(mine) if mine else None, "accuracy_ci95": proportion_ci(correct, len(mine)),
            "p_value_vs_chance": binomial_test(correct, len(mine)),
            "sensitivity": tp / n_syn if n_syn else None, "specificity": tn / n_real if n_real else None,
            "kappa": cohen_kappa(truth, said),
            "auc_confidence": auc([s for s, t in zip(signed, truth) if t], [s for s, t in zip(signed, truth) if not t]),
            "mean_confidence": (sum(a["confidence"] for a in mine) / len(mine)) if mine else None,
            "median_seconds": sorted(secs)[len(secs) // 2] if secs else None,
        })
    labels = {r: {a["image_id"]: a["says_synthetic"] for a in by_reader.get(r, [])} for r in readers}
    active = [r for r in readers if labels[r]]
    truth_of = {a["image_id"]: a["synthetic"] for a in rows}
    complete = sorted(i for i in truth_of if all(i in labels[r] for r in active))
    fleiss = None
    if len(active) >= 2 and complete:
        table = [[sum(1 - labels[r][i] for r in active), sum(labels[r][i] for r in active)] for i in complete]
        fleiss = fleiss_kappa(table)
    # majority vote over the readers who answered the image
    per_image, majority_correct, ties = [], 0, 0
    votes: dict[str, list[int]] = defaultdict(list)
    info: dict[str, dict] = {}
    for a in rows:
        votes[a["image_id"]].append(a["says_synthetic"])
        info[a["image_id"]] = a
    for image_id, v in votes.items():
        a = info[image_id]
        k_syn = sum(v)
        majority = None if 2 * k_syn == len(v) else int(2 * k_syn > len(v))
        ties += majority is None
        majority_correct += majority is not None and majority == a["synthetic"]
        right = sum(x == a["synthetic"] for x in v)
        per_image.append({"image_id": image_id, "source": a["source"], "synthetic": a["synthetic"],
                          "class": a["class_name"], "origin_index": a["origin_index"], "readers": len(v),
                          "correct": right, "fraction_correct": right / len(v), "majority": majority})
    per_image.sort(key=lambda d: (d["fraction_correct"], d["image_id"]))
    n_votes = len(votes) - ties
    pooled_correct = sum(a["synthetic"] == a["says_synthetic"] for a in rows)
    by_source: dict[str, list[int]] = defaultdict(list)
    for a in rows:
        by_source[a["source"]].append(a["says_synthetic"])
    return {
        "per_reader": per_reader,
        "kappa_vs_truth": summary([p["kappa"] for p in per_reader]),
        "accuracy": summary([p["accuracy"] for p in per_reader]),
        "fleiss_kappa": {"kappa": fleiss, "readers": len(active), "images": len(complete)},
        "pairwise_kappa": pairwise_kappas({r: labels[r] for r in active}),
        "majority_vote": {"correct": int(majority_correct), "n": n_votes, "ties": ties,
                          "accuracy": majority_correct / n_votes if n_votes else None},
        "pooled": {**_rate(pooled_correct, len(rows)), "p_value_vs_chance": binomial_test(pooled_correct, len(rows))},
        "called_synthetic_by_source": {s: _rate(sum(v), len(v))
                                       for s, v in sorted(by_source.items(), key=lambda kv: (kv[0] != "real", kv[0]))},
        "per_image": per_image,
    }


def plausibility_analysis(answers: list[dict], readers: list[str], criteria: dict[str, list[str]]) -> dict:
    rows = [a for a in answers if a["plausible"] is not None]
    sources = sorted({a["source"] for a in rows}, key=lambda s: (s != "real", s))
    classes = list(criteria)
    cells: dict[tuple[str, str], list[int]] = defaultdict(list)
    per_reader: dict[tuple[str, str], list[int]] = defaultdict(list)
    failures: dict[tuple[str, str, int], int] = defaultdict(int)
    for a in rows:
        cells[(a["source"], a["class_name"])].append(a["plausible"])
        cells[(a["source"], "all classes")].append(a["plausible"])
        per_reader[(a["reader"], a["source"])].append(a["plausible"])
        met = set(a["criteria_met"] or [])
        for j in range(len(criteria.get(a["class_name"], []))):
            failures[(a["source"], a["class_name"], j)] += j not in met
    table = [{"class": c, **{s: _rate(sum(cells[(s, c)]), len(cells[(s, c)])) for s in sources}}
             for c in classes + ["all classes"]]
    return {
        "sources": sources,
        "by_class": table,
        "per_reader": [{"reader": r, **{s: _rate(sum(per_reader[(r, s)]), len(per_reader[(r, s)])) for s in sources}}
                       for r in readers],
        "criterion_failures": [{"source": s, "class": c, "criterion": text, "failed": failures[(s, c, j)],
                                "rated": len(cells[(s, c)])}
                               for s in sources for c in classes for j, text in enumerate(criteria.get(c, []))],
        "note": "ratings pooled over readers: each (reader, image) rating is one trial in the interval",
    }


def analyze_study(folder: str | Path, out: str | Path | None = None) -> dict:
    """Analyse the study in ``folder``; write CSV / JSON / HTML to ``out`` (default FOLDER/analysis)."""
    folder = Path(folder)
    out = Path(out) if out else folder / "analysis"
    with db.connect(folder) as con:
        meta = db.all_meta(con)
        answers = db.answer_rows(con)
        progress = db.reader_progress(con)
    readers = [p["name"] for p in progress]
    result: dict = {
        "study": {k: meta[k] for k in ("mode", "show_class", "seed", "per_source", "per_class", "class_names",
                                        "num_images", "real", "sources", "created_at") if k in meta},
        "progress": progress,
        "answers": len(answers),
        "complete": all(p["done"] == p["total"] for p in progress),
    }
    if meta["mode"] in ("turing", "both"):
        result["turing"] = turing_analysis(answers, readers)
    if meta["mode"] in ("plausibility", "both"):
        result["plausibility"] = plausibility_analysis(answers, readers, meta.get("criteria") or {})
    out.mkdir(parents=True, exist_ok=True)
    _write_tables(result, answers, out)
    atomic_write_json(result, out / "analysis.json")
    atomic_write_text(_page(result, folder), out / "reader_study.html")
    return result


# --------------------------------------------------------------------------- export


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([["" if v is None else v for v in r] for r in rows])
    atomic_write_text(buf.getvalue(), path)


def _write_tables(result: dict, answers: list[dict], out: Path) -> None:
    cols = ["reader", "position", "image_id", "source", "synthetic", "class_name", "origin_index", "says_synthetic",
            "confidence", "plausible", "criteria_met", "note", "client_ms", "seconds", "answered_at"]
    _csv(out / "answers.csv", cols,
         [[a[c] if c != "criteria_met" or a[c] is None else " ".join(map(str, a[c])) for c in cols] for a in answers])
    t = result.get("turing")
    if t:
        rc = ["reader", "n", "correct", "accuracy", "p_value_vs_chance", "sensitivity", "specificity", "kappa",
              "auc_confidence", "mean_confidence", "median_seconds"]
        _csv(out / "readers.csv", rc + ["accuracy_ci_low", "accuracy_ci_high"],
             [[p[c] for c in rc] + list(p["accuracy_ci95"] or [None, None]) for p in t["per_reader"]])
        ic = ["image_id", "source", "synthetic", "class", "origin_index", "readers", "correct", "fraction_correct",
              "majority"]
        _csv(out / "images.csv", ic, [[p[c] for c in ic] for p in t["per_image"]])
        _csv(out / "pairwise_kappa.csv", ["reader_a", "reader_b", "n", "kappa"],
             [[p["reader_a"], p["reader_b"], p["n"], p["kappa"]] for p in t["pairwise_kappa"]])
    p = result.get("plausibility")
    if p:
        rows = []
        for row in p["by_class"]:
            for s in p["sources"]:
                c = row[s]
                rows.append([row["class"], s, c["k"], c["n"], c["rate"], *(c["ci95"] or [None, None])])
        _csv(out / "plausibility.csv", ["class", "source", "plausible", "rated", "fraction", "ci_low", "ci_high"], rows)
        _csv(out / "criterion_failures.csv", ["source", "class", "criterion", "failed", "rated"],
             [[f["source"], f["class"], f["criterion"], f["failed"], f["rated"]] for f in p["criterion_failures"]])


# --------------------------------------------------------------------------- HTML


def _n(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return escape(str(v))


def _p(v) -> str:
    return "-" if v is None else ("< 0.001" if v < 0.001 else f"{v:.3f}")


def _ci(ci) -> str:
    return "-" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _rate_cell(c: dict) -> str:
    if not c["n"]:
        return "-"
    return f"{c['rate']:.0%} ({c['k']}/{c['n']}) {_ci(c['ci95'])}"


def _img_tag(folder: Path, image_id: str, caption: str) -> str:
    path = folder / "images" / f"{image_id}.png"
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure class="cell"><img src="data:image/png;base64,{data}" width="96" height="96" '
            f'style="image-rendering:pixelated" alt="{escape(image_id)}"><figcaption>{caption}</figcaption></figure>')


def study_section(result: dict, folder: Path) -> str:
    """The report section of a study's analysis (an HTML fragment)."""
    s = result["study"]
    real = s.get("real") or {}
    parts = ["<h2>Reader study</h2>",
             f"<p>Mode <b>{escape(s['mode'])}</b>; {s.get('num_images')} images, {s.get('per_source')} per source "
             f"({escape(', '.join(f'{k} {v}' for k, v in (s.get('per_class') or {}).items()))} per class); real images "
             f"from the <b>{escape(str(real.get('split')))}</b> split of {escape(str(real.get('spec')))} "
             f"(fingerprint <code>{escape(str(real.get('fingerprint')))}</code>); class "
             f"{'shown' if s.get('show_class') else 'hidden'}; {result['answers']} answers"
             f"{'' if result['complete'] else ' (<b>not every reader has finished</b>)'}.</p>"]
    checks = [f"{escape(src['name'])}: {escape(src['generator_check']['detail'])}" for src in s.get("sources", [])
              if src.get("generator_check")]
    if checks:
        parts.append("<p>Generators vs the real images shown: " + "; ".join(checks) + ".</p>")
    t = result.get("turing")
    if t:
        k, f, m, pooled = t["kappa_vs_truth"], t["fleiss_kappa"], t["majority_vote"], t["pooled"]
        parts.append("<h3>Real or synthetic?</h3>")
        parts.append(f"<p class='verdict'>Cohen's kappa against the truth: mean {_n(k['mean'], 2)} (min {_n(k['min'], 2)}, "
                     f"max {_n(k['max'], 2)}) over {k['n']} readers; 0 is what guessing gets. Pooled accuracy "
                     f"{_n(pooled['rate'], 3)} {_ci(pooled['ci95'])} over {pooled['n']} answers (binomial p "
                     f"{_p(pooled['p_value_vs_chance'])}, answers treated as independent). Fleiss' kappa across "
                     f"{f['readers']} readers on {f['images']} images: {_n(f['kappa'], 3)}. Majority vote: "
                     f"{m['correct']} of {m['n']} correct ({_n(m['accuracy'], 3)}), {m['ties']} ties.</p>")
        parts.append(_table(["reader", "answers", "accuracy [95% CI]", "binomial p vs 0.5", "sensitivity",
                             "specificity", "kappa", "AUC (confidence)", "median s"],
                            [[escape(p["reader"]), str(p["n"]), f"{_n(p['accuracy'])} {_ci(p['accuracy_ci95'])}",
                              _p(p["p_value_vs_chance"]), _n(p["sensitivity"]), _n(p["specificity"]),
                              _n(p["kappa"]), _n(p["auc_confidence"]), _n(p["median_seconds"], 1)]
                             for p in t["per_reader"]]))
        parts.append("<p>Sensitivity: synthetic images called synthetic (synthetic = positive); specificity: real "
                     "images called real.</p>")
        parts.append(_table(["source", "called synthetic"],
                            [[escape(src), _rate_cell(c)] for src, c in t["called_synthetic_by_source"].items()]))
        if t["pairwise_kappa"]:
            parts.append("<details><summary>pairwise Cohen's kappa between readers</summary>" +
                         _table(["reader", "reader", "images", "kappa"],
                                [[escape(p["reader_a"]), escape(p["reader_b"]), str(p["n"]), _n(p["kappa"])]
                                 for p in t["pairwise_kappa"]]) + "</details>")
        fooled = [p for p in t["per_image"] if p["synthetic"]][:FOOLED_SHOWN]
        if fooled:
            parts.append("<h3>Synthetic images that fooled most readers</h3><div class='grid'>" +
                         "".join(_img_tag(folder, p["image_id"], f"{escape(p['source'])} · {escape(p['class'])}<br>"
                                          f"{p['correct']}/{p['readers']} correct") for p in fooled) + "</div>")
    p = result.get("plausibility")
    if p:
        parts.append("<h3>Plausibility</h3><p>An image is plausible only if every criterion of its class is met; "
                     "real images show what a perfect generator would get. Fraction (plausible/rated) [exact 95% CI]; "
                     + escape(p["note"]) + ".</p>")
        parts.append(_table(["class"] + p["sources"],
                            [[escape(row["class"])] + [_rate_cell(row[s]) for s in p["sources"]] for row in p["by_class"]]))
        parts.append(_table(["reader"] + p["sources"],
                            [[escape(row["reader"])] + [_rate_cell(row[s]) for s in p["sources"]]
                             for row in p["per_reader"]]))
        failing = [f for f in p["criterion_failures"] if f["failed"]]
        parts.append("<h3>Criteria not met</h3>" + (_table(
            ["source", "class", "criterion", "failed / rated"],
            [[escape(f["source"]), escape(f["class"]), escape(f["criterion"]), f"{f['failed']}/{f['rated']}"]
             for f in sorted(failing, key=lambda f: -f["failed"])]) if failing else "<p>none</p>"))
    return "\n".join(parts)


def _page(result: dict, folder: Path) -> str:
    from synthmed.report.html import CSS

    extra = ".grid{display:flex;flex-wrap:wrap;gap:8px}.cell{margin:0;text-align:center;font-size:.8em}"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Reader study</title>"
            f"<style>{CSS}{extra}</style></head><body><main><h1>Reader study analysis</h1>"
            f"{study_section(result, folder)}</main></body></html>\n")
