"""HTML sections for the mask steps of `synthmed run`: caption accuracy and the segmentation ratio sweep.

Rendered from the raw results (``metrics.json``'s ``caption_accuracy`` and ``segmentation_downstream``,
written by :func:`synthmed.pipeline.step_caption_accuracy` / :func:`step_segmentation_downstream`).
Every table says what data it is on, how many images, which seeds, and what its interval is.
"""

from __future__ import annotations

from synthmed.report.downstream_section import _diff_cell, _e, _f, _table

_LEVELS = ("none", "low", "medium", "high")


def _ratio(name: str) -> str:
    return name.removeprefix("ratio-")


def _ci(ci) -> str:
    return "" if not ci else f" [{_f(ci[0])}, {_f(ci[1])}]"


def _acc(entry: dict | None, key: str) -> str:
    if not entry or entry.get(key) is None:
        return "–"
    return _f(entry[key]) + _ci(entry.get(key.replace("accuracy", "ci95")))


def _mean_std(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return _f(d["mean"]) + ("" if d.get("std") is None else f" ± {_f(d['std'])}")


def _skipped(title: str, anchor: str, why: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2><p class="muted">Not computed: {_e(why)}</p></section>'


def render_caption_accuracy(res: dict) -> str:
    title = "Caption accuracy: does each synthetic image show what its caption says?"
    if res.get("skipped"):
        return _skipped(title, "caption-accuracy", res["skipped"])
    seg = res.get("segmenter") or {}
    real = seg.get("real_test") or {}
    ref = res.get("real_reference") or {}
    images = res.get("images") or {}
    n, n_test = res.get("n_images"), seg.get("n_test") or ref.get("n_images")
    rules = res.get("rules") or {}
    explain = (
        "<p>Each synthetic image is segmented by a U-Net trained on the <b>real</b> training masks; its caption is "
        "rebuilt from the predicted mask with the same caption rules (prevalence = class pixels / all pixels; low "
        f"below {_e(rules.get('low_below'))}, high above {_e(rules.get('high_above'))}) and compared with the "
        "caption it was generated from. <b>Presence accuracy</b>: the share of images where \"the class is "
        "mentioned\" agrees. <b>Level accuracy</b>: the share where none / low / medium / high agrees. The "
        "<b>real-test reference</b> is the same statistic for the real test images, their true masks' captions "
        "against the captions rebuilt from the segmenter: what a perfect generator would score with this "
        "segmenter. A synthetic figure well below its reference points at the generator; a low reference "
        "points at the segmenter (see its Dice).</p>")
    seg_text = (f"U-Net {_e(seg.get('widths'))} ({_e(seg.get('loss'))}, class weighting "
                f"{_e(seg.get('class_weighting'))}), seed {_e(seg.get('seed'))}, trained on {_e(seg.get('n_train'))} "
                f"real training images (best real-validation step {_e(seg.get('best_step'))} of "
                f"{_e(seg.get('steps'))})")
    rows = []
    per_class = res.get("per_class") or {}
    for c, e in per_class.items():
        r = (ref.get("per_class") or {}).get(c)
        rows.append([_e(c), _acc(e, "presence_accuracy"), _acc(e, "level_accuracy"), _acc(r, "presence_accuracy"),
                     _acc(r, "level_accuracy"), _f((real.get("dice") or {}).get(c)),
                     _f((real.get("iou") or {}).get(c))])
    rows.append(["all classes (mean)", _f(res.get("mean_presence_accuracy")), _f(res.get("mean_level_accuracy")),
                 _f(ref.get("mean_presence_accuracy")), _f(ref.get("mean_level_accuracy")),
                 _f(real.get("mean_dice")), _f(real.get("mean_iou"))])
    rows.append(["exact caption (every class agrees)",
                 _f(res.get("exact_caption_rate")) + _ci(res.get("exact_caption_ci95")), "",
                 _f(ref.get("exact_caption_rate")) + _ci(ref.get("exact_caption_ci95")), "", "", ""])
    caption = (f"Synthetic: {n} images '{_e(images.get('name'))}' (fingerprint <span class=\"mono\">"
               f"{_e(images.get('fingerprint'))}</span>). Real-test reference and segmenter Dice / IoU: the {n_test} "
               f"real test images (Dice / IoU pooled over all their pixels). Segmenter: {seg_text}. One segmenter, one "
               "seed: no spread over seeds is given; brackets are 95% Wilson intervals over the images.")
    table = _table(["mask class", "synthetic presence accuracy", "synthetic level accuracy",
                    "real-test presence (reference)", "real-test level (reference)", "segmenter Dice (real test)",
                    "segmenter IoU (real test)"], rows)
    confusion = []
    for c, e in per_class.items():
        t = e.get("table") or {}
        body = [[_e(a)] + [_e(t.get(a, {}).get(b, 0)) for b in _LEVELS] for a in _LEVELS]
        confusion.append(f"<div><b>{_e(c)}</b>" + _table(["generated as \\ read as"] + list(_LEVELS), body)
                         + "</div>")
    details = ("<details><summary>Generating level x level read by the segmenter, per mask class (synthetic "
               f"images, counts of {n})</summary><div class=\"cms\">" + "".join(confusion) + "</div></details>"
               if confusion else "")
    return (f'<section id="caption-accuracy"><h2>{_e(title)}</h2>{explain}<figure>{table}'
            f"<figcaption>{caption}</figcaption></figure>{details}</section>")


def render_segmentation_downstream(res: dict) -> str:
    title = "Segmentation downstream: do synthetic image-mask pairs help a segmenter?"
    if res.get("skipped"):
        return _skipped(title, "segmentation-downstream", res["skipped"])
    summary = res.get("summary") or {}
    seeds = res.get("seeds") or []
    runs = res.get("runs") or []
    n_train = {r["protocol"]: r["n_train"] for r in runs}
    classes = []
    for row in summary.values():
        classes += [c for c in (row.get("dice") or {}) if c not in classes]
    rows = []
    for p, row in summary.items():
        vs = row.get("vs_100_0") or {}
        rows.append([_e(_ratio(p)), _e(n_train.get(p, "–")), _mean_std(row.get("mean_dice")),
                     _mean_std(row.get("mean_iou")), _diff_cell(vs.get("mean_dice")) if vs else "reference",
                     _diff_cell(vs.get("mean_iou")) if vs else "reference",
                     _e((row.get("mean_dice") or {}).get("n", "–"))]
                    + [_mean_std((row.get("dice") or {}).get(c)) for c in classes])
    test, val, syn = res.get("test") or {}, res.get("val") or {}, res.get("synthetic") or {}
    caption = (f"One U-Net per ratio and seed (seeds {', '.join(str(s) for s in seeds)}), trained on real:synthetic "
               f"image-mask pairs drawn per class (total = the {_e(res.get('n_train_real'))} real training images, "
               "100:100 = real plus as many synthetic), early-stopped on the real validation split "
               f"(n={_e(val.get('n'))}) and scored on the real test split (n={_e(test.get('n'))}, fingerprint "
               f"<span class=\"mono\">{_e(test.get('fingerprint'))}</span>); synthetic pool {_e(syn.get('n'))} images "
               f"'{_e(syn.get('name'))}'. Dice / IoU pooled over the test pixels, mean over mask classes; mean ± "
               "sample std over seeds. vs 100:0: paired difference over the same seeds, mean [95% t interval]; "
               "bold when the interval excludes 0.")
    table = _table(["real:synthetic", "training images", "mean Dice", "mean IoU", "Dice vs 100:0 [95% CI]",
                    "IoU vs 100:0 [95% CI]", "N seeds"] + [f"Dice {_e(c)}" for c in classes], rows)
    warn = "".join(f"<li>{_e(w)}</li>" for w in res.get("warnings") or [])
    return (f'<section id="segmentation-downstream"><h2>{_e(title)}</h2>'
            + (f'<div class="warnings"><ul>{warn}</ul></div>' if warn else "")
            + f"<figure>{table}<figcaption>{caption}</figcaption></figure></section>")
