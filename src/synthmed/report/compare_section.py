"""HTML section for a generator comparison (:func:`synthmed.compare.compare_generators`).

Self-contained (html.escape only) so ``report/html.py`` can import it without a cycle. The reader
sees one row per family at equal training time, FD next to the real floor it cannot beat, and the
downstream gain with its interval, with the data, extractor, N and seeds named above the table.
"""

from __future__ import annotations

from html import escape

#: (key, heading, format); "downstream" and "collapsed" are drawn by their own cells
COLUMNS = [("train_seconds", "train s", "{:.0f}"), ("train_length", "trained", "{}"), ("fd", "FD", "{:.3g}"),
           ("fd_real_floor", "real floor", "{:.3g}"), ("fd_ratio", "FD / floor", "{:.2f}"),
           ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("coverage", "coverage", "{:.3f}"),
           ("conditional_accuracy", "cond. acc.", "{:.3f}"),
           ("sampling_images_per_second", "sampling img/s", "{:.3g}"), ("downstream", "downstream Δ bal. acc.", "{}"),
           ("collapsed", "collapsed classes", "{}")]


def _e(v) -> str:
    return escape("" if v is None else str(v), quote=True)


def downstream_cell(row: dict) -> str:
    """Paired difference (real + synthetic minus real) with its 95% interval, plain text."""
    d = (row.get("downstream") or {}).get("difference")
    if not d or d.get("mean") is None:
        return "-"
    if d.get("ci_low") is None:
        return f"{d['mean']:+.3f} (no CI, one seed)"
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def table_cells(row: dict) -> list[str]:
    """The row's cells as plain text, in :data:`COLUMNS` order."""
    cells = []
    for key, _, fmt in COLUMNS:
        if key == "downstream":
            cells.append(downstream_cell(row))
        elif key == "collapsed":
            cells.append(", ".join(row.get("collapsed_classes") or []) or "-")
        else:
            v = row.get(key)
            cells.append("-" if v is None else fmt.format(v))
    return cells


def describe(result: dict) -> str:
    """One paragraph naming the data, time, device, extractor, N and seeds behind the table."""
    d = result["data"]
    n = {r.get("n_synthetic") for r in result["families"].values()}
    return (f"{result['minutes_per_family']:g} min of training per family on {d['source']} ({d['n_train']} training "
            f"images; {result['device']}, {result['threads']} threads, torch {result['torch']}, seed {result['seed']}). "
            f"FD in the '{result['extractor']}' features against the real test split ({d['n_test']} images) next to the "
            "real floor (real validation images at the synthetic set's class counts); "
            f"{'/'.join(str(x) for x in sorted(n))} synthetic images per family; conditional accuracy by the judge "
            f"({result['judge']['arch']}, trained on the real training split); downstream: balanced accuracy of real + "
            f"synthetic minus real only, paired over seeds {result['downstream_seeds']}, 95% t interval.")


def render_comparison(result: dict) -> str:
    num = ' class="num"'
    head = "".join(f"<th{num if i else ''}>{_e(h)}</th>" for i, h in enumerate(["family"] + [c[1] for c in COLUMNS]))
    body = "".join("<tr>" + f"<td>{_e(name)}<br><span class=\"muted\">{_e(row.get('summary'))}</span></td>"
                   + "".join(f'<td class="num">{_e(c)}</td>' for c in table_cells(row)) + "</tr>"
                   for name, row in result["families"].items())
    ranking = " &lt; ".join(_e(n) for n in result.get("ranking_by_fd", []))
    return (f'<section id="comparison"><h2>Generator comparison at equal wall time</h2><p>{_e(describe(result))}</p>'
            f'<div class="scroll"><table class="compact"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            f"</div><p>Ranking by FD (lower is closer to the real test images): {ranking}.</p></section>")
