"""HTML section for a downstream experiment (:func:`synthmed.downstream.experiment.run_experiment`).

Self-contained (html.escape and the SVG bar chart only), so ``report/html.py`` can import
it without a cycle. The reader should see at once (1) how each protocol scores, (2) whether
its gain over ``baseline`` and ``traditional`` is larger than the repeat-to-repeat noise,
and (3) what data and classifier produced the numbers.
"""

from __future__ import annotations

from html import escape

from synthmed.downstream.experiment import HEADLINE_METRICS, REFERENCES
from synthmed.report.figures import bar_chart_svg

CHART_METRICS = ("accuracy", "balanced_accuracy", "auc")


def _e(v) -> str:
    return escape("" if v is None else str(v), quote=True)


def _f(v, signed: bool = False) -> str:
    return "–" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def _label(p: str, f: str) -> str:
    return p if f == "none" else f"{p} / {f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Cells are escaped HTML already; every column after the first is numeric (right-aligned)."""
    num = ' class="num"'
    head = "".join(f"<th{num if i else ''}>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{num if i else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _svg(svg: str) -> str:
    return svg.replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)  # inline SVG needs no namespace


def _diff_cell(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    text = _f(d["mean"], True)
    if d.get("ci_low") is None:
        return text + " (no CI, n=1)"
    text += f" [{_f(d['ci_low'], True)}, {_f(d['ci_high'], True)}]"
    # an interval that excludes 0 is the only case where the sign of the gain is established
    return f"<strong>{text}</strong>" if d["ci_low"] > 0 or d["ci_high"] < 0 else text


def render_downstream_experiment(result: dict) -> str:
    summary = result.get("summary") or []
    by = {(r["protocol"], r["filter"], r["metric"]): r for r in summary}
    groups = list(dict.fromkeys((r["protocol"], r["filter"]) for r in summary))
    metrics = [m for m in HEADLINE_METRICS if any(r["metric"] == m for r in summary)]
    n_rep, n_test = result.get("n_repeats"), result.get("n_test")
    conf = round(100 * result.get("confidence", 0.95))
    clf = result.get("classifier") or {}
    budget = (f"{clf.get('steps')} optimizer steps for every protocol, validated every {clf.get('eval_every')} steps"
              if clf.get("steps") else f"up to {clf.get('epochs')} epochs")
    clf_text = (f"{clf.get('arch')} ({clf.get('optimizer')}, lr {clf.get('lr')}, batch {clf.get('batch_size')}, "
                f"{budget}, early stopping on real validation loss)") if clf else "–"
    caption = (f"{n_rep} repeat{'s' if n_rep != 1 else ''}; scored on the real test split (n={n_test}); "
               f"classifier {clf_text}.")

    parts = ['<section id="downstream-experiment"><h2>Downstream experiment: which training protocol helps?</h2>']
    if result.get("warnings"):
        parts.append('<div class="warnings"><ul>' + "".join(f"<li>{_e(w)}</li>" for w in result["warnings"])
                     + "</ul></div>")

    rows = []
    for p, f in groups:
        cells = []
        for m in metrics:
            r = by.get((p, f, m))
            cells.append("–" if r is None or r["mean"] is None else
                         _f(r["mean"]) + ("" if r["std"] is None else f" ± {_f(r['std'])}"))
        rows.append([_e(_label(p, f))] + cells)
    parts.append("<figure>" + _table(["protocol"] + [_e(m.replace("_", " ")) for m in metrics], rows)
                 + f"<figcaption>Mean ± sample standard deviation over repeats. {_e(caption)}</figcaption></figure>")

    for ref in REFERENCES:
        diff_rows = [[_e(_label(p, f))] + [_diff_cell(by.get((p, f, m), {}).get(f"vs_{ref}")) for m in metrics]
                     for p, f in groups if any(f"vs_{ref}" in by.get((p, f, m), {}) for m in metrics)]
        if diff_rows:
            parts.append(f"<h3>Paired difference vs {_e(ref)}</h3><figure>"
                         + _table(["protocol"] + [_e(m.replace("_", " ")) for m in metrics], diff_rows)
                         + f"<figcaption>Protocol minus {_e(ref)}, paired over repeats (same training subset and "
                           f"seed): mean [{conf}% t interval]. Bold: the interval excludes 0, so the sign of the "
                           f"difference is established at this level. {_e(caption)}</figcaption></figure>")

    filters = list(dict.fromkeys(f for _, f in groups))
    protocols = list(dict.fromkeys(p for p, _ in groups))
    charts = []
    for m in (m for m in CHART_METRICS if m in metrics):
        series = {}
        for f in filters:
            entries = [by.get((p, f, m)) for p in protocols]
            series[f"filter: {f}"] = [(e["mean"], e["std"]) if e else None for e in entries]
        charts.append(bar_chart_svg(protocols, series, m.replace("_", " "), m.replace("_", " "), y_max=1.0,
                                    width=560))
    if "baseline" in protocols and metrics:
        m = "balanced_accuracy" if "balanced_accuracy" in metrics else metrics[0]
        series = {}
        for f in filters:
            entries = []
            for p in protocols:
                d = by.get((p, f, m), {}).get("vs_baseline")
                ok = d and d.get("mean") is not None
                entries.append((d["mean"], None if d["ci_high"] is None else d["ci_high"] - d["mean"]) if ok else None)
            series[f"filter: {f}"] = entries
        charts.append(bar_chart_svg(protocols, series, f"{m.replace('_', ' ')}: difference vs baseline",
                                    "difference", width=560))
    if charts:
        parts.append('<figure><div class="charts">' + "".join(_svg(c) for c in charts) + "</div>"
                     + f"<figcaption>Score charts: mean ± standard deviation over repeats. Difference chart: mean "
                       f"paired difference with its {conf}% confidence interval. {_e(caption)}</figcaption></figure>")

    comp_rows = []
    for label, stages in (result.get("composition") or {}).items():
        for stage, c in stages.items():
            fmt = lambda d: ", ".join(f"{_e(k)} {v}" for k, v in d.items())  # noqa: E731
            comp_rows.append([_e(label.removesuffix(" / none")), _e(stage), fmt(c["real"]), fmt(c["synthetic"]),
                              _e(", ".join(c.get("augment") or []) or "none")])
    if comp_rows:
        parts.append("<h3>Training data of each protocol (first repeat)</h3>"
                     + _table(["protocol", "stage", "real per class", "synthetic per class", "augmentation"],
                              comp_rows))

    rep_rows = [[_e(r["id"]), _e(r["seed"]), _e(r["n"]), f'<span class="mono">{_e(r["fingerprint"])}</span>',
                 f'<span class="mono">{_e(", ".join(r.get("generator_fingerprints") or []) or "–")}</span>']
                for r in result.get("repeats") or []]
    data = result.get("data") or {}
    fp = " · ".join(f"{s} n={data[s]['n']} <span class=\"mono\">{_e(data[s]['fingerprint'])}</span>"
                    for s in ("val", "test") if s in data)
    parts.append("<h3>Repeats and data</h3>"
                 + _table(["repeat", "seed", "real training images", "training fingerprint",
                           "generator trained on"], rep_rows)
                 + (f'<p class="muted">Early stopping and scoring on real images only: {fp}.</p>' if fp else ""))
    parts.append("</section>")
    return "".join(parts)
