"""The HTML report of a run: one self-contained file (images as base64 PNG, charts as inline
SVG, no script, no network) that says what happened without opening six files.

    write_run_report(run_dir, data=None, probs=None)   # the engine, at the end of fit/finetune
    kclassify report RUN [--out FILE.html]               # the same, afterwards

Headline figures come from metrics.json, per-class figures from val_report.json (the files the
run wrote), so the page and the files never disagree; the images the model gets wrong come from
the validation probabilities (passed in, read from val_predictions.npz, or predicted again).
Every list is capped so that a 1,000-class run stays readable, and each cap says what it left out.
"""
import base64
import csv
import html
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kclassify.commands.augment import write_preview
from kclassify.errors import DataError
from kclassify.inference import predict
from kclassify.kit import kitlib
from kclassify.metrics import classification_report
from kclassify.plots import plot_history
from kclassify.recipe import Recipe
from kclassify.run import read_json, Run

# (id, heading): the sections, in page order. Tests check that each one renders.
SECTIONS = [
    ("summary", "Top-1 and top-5"),
    ("recipe", "Recipe"),
    ("data", "Data"),
    ("curves", "Training curves"),
    ("classes", "Per-class precision, recall and F1"),
    ("confusions", "Most confused pairs"),
    ("wrong", "Most confidently wrong validation images"),
    ("calibration", "Calibration"),
    ("augment", "Augmentation preview"),
    ("exports", "Exports"),
]
WEAK_F1 = 0.5           # classes below this F1 are marked weak
CLASS_ROWS = 60         # per-class rows shown open; the rest are in a collapsed table
CHART_CLASSES = 60      # above this, the class-count chart is a sorted profile without labels
PAIRS, PAIR_EXAMPLES = 10, 4
WRONG_IMAGES = 24
BINS = 15               # reliability diagram: equal-width bins of the top-1 probability
THUMB = 96              # thumbnails are at most this many pixels on a side
PREVIEW_IMAGES = 16
PREVIEW_WIDTH = 1100   # pixels; the grid's PNG is re-encoded at this width
LATENCY_RUNS = 50


def write_run_report(run_dir, data=None, probs=None, echo=print):
    """Write run_dir/report.html; `data` (the run's Dataset) and `probs` (validation
    probabilities, N x K, in data.val order) are loaded or predicted when not given."""
    run_dir = Path(run_dir)
    return write_html_report(run_dir, run_dir / "report.html", data, probs, echo)


def write_html_report(run_dir, out, data=None, probs=None, echo=print):
    """The report of `run_dir` written to `out` (any path); returns that path."""
    run = Run.load(run_dir)
    if data is None:
        data = run.data()
    probs = np.asarray(validation_probs(run, data) if probs is None else probs, np.float32)
    if probs.shape != (len(data.val), len(data.class_names)):
        raise DataError(f"validation probabilities have shape {probs.shape}, expected "
                        f"({len(data.val)}, {len(data.class_names)}) for this run's validation split")
    start = time.perf_counter()
    page = render(run, data, probs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    echo(f"report: {out} ({len(page.encode()) / 1e6:.2f} MB, {time.perf_counter() - start:.1f} s)")
    return out


def validation_probs(run, data):
    """val_predictions.npz when the run wrote it (checked against the split), else predict."""
    path = run.file("val_predictions.npz")
    if path.is_file():
        with np.load(path) as z:
            probs, labels = z["probs"], z["labels"]
        if len(labels) != len(data.val) or not np.array_equal(labels, data.val.labels):
            raise DataError(f"{path} does not match the run's validation split ({len(labels)} labels there, "
                            f"{len(data.val)} images here): the data changed since the run")
        return probs

    return predict(run.load_model(), all_images(data.val))


def all_images(split):
    """A split's uint8 images: the array of an in-memory split, decoded for a streamed one."""
    images = getattr(split, "images", None)
    return images if images is not None else split.take(np.arange(len(split)))


# ---------------------------------------------------------------------------- the page


def render(run, data, probs):
    """The whole HTML page as a string."""
    names = list(data.class_names)
    report = _read_json(run.file("val_report.json")) or classification_report(probs, data.val.labels, names)
    metrics = run.metrics or {"val": {k: report[k] for k in ("top1", "top5")}}
    recipe = run.recipe
    ctx = {"run": run, "data": data, "probs": probs, "names": names, "report": report,
           "metrics": metrics, "recipe": recipe}
    bodies = {"summary": summary_section, "recipe": recipe_section, "data": data_section,
              "curves": curves_section, "classes": classes_section, "confusions": confusions_section,
              "wrong": wrong_section, "calibration": calibration_section, "augment": augment_section,
              "exports": exports_section}
    sections = "\n".join(f'<section id="{sid}">\n<h2>{title}</h2>\n{bodies[sid](ctx)}\n</section>'
                         for sid, title in SECTIONS)
    nav = " ".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS)
    when = time.strftime("%Y-%m-%d %H:%M")
    title = f"kclassify report: {recipe.name}"
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<header>\n<h1>{_e(title)}</h1>\n"
            f"<p>{_e(str(run.dir.resolve()))} &middot; model {_e(recipe.model.name)} &middot; {len(names)} classes "
            f"&middot; written {when} on {_e(platform.node() or 'this machine')}</p>\n<nav>{nav}</nav>\n</header>\n"
            f"<main>\n{sections}\n</main>\n</body>\n</html>\n")


def summary_section(ctx):
    m, report = ctx["metrics"], ctx["report"]
    rows = []
    for key, label in (("val", "validation"), ("val_tta", "validation with test-time augmentation")):
        if key in m:
            v = m[key]
            views = ", ".join(x for x in (v.get("tta"), f"{v['views']} views" if "views" in v else None) if x)
            views = f" ({_e(views)})" if views else ""
            cells = "".join(f"<td>{_metric(f'{key}.{k}', v[k], pct=k != 'loss')}</td>" if k in v else "<td>-</td>"
                            for k in ("top1", "top5", "loss"))
            rows.append(f"<tr><th>{label}{views}</th>{cells}</tr>")
    table = (f'<table class="metrics"><tr><th></th><th>top-1</th><th>top-5</th><th>loss</th></tr>'
             f'{"".join(rows)}</table>')
    weak = sum(c["f1"] < WEAK_F1 for c in report["per_class"])
    facts = [f"macro F1 {report['macro']['f1']:.3f} over {len(report['per_class'])} classes; "
             f"{weak} weak (F1 &lt; {WEAK_F1})"]
    for key, label in (("epochs", "epochs"), ("train_seconds", "training seconds"),
                       ("train_images_per_s", "training images a second (the median epoch)"),
                       ("train_gflops", "training GFLOP/s (6 per forward MAC)"), ("params", "parameters"),
                       ("train_images", "training images"), ("val_images", "validation images")):
        if key in m:
            facts.append(f"{label}: {_metric(key, m[key])}")
    if "val_tta" not in m:
        facts.append("no test-time augmentation in this run's metrics")
    return table + "<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>"


def recipe_section(ctx):
    recipe = ctx["recipe"]
    changed = _changed_fields(Recipe().model_dump(mode="json"), recipe.model_dump(mode="json"))
    rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td><code>{_e(json.dumps(v))}</code></td></tr>"
                   for k, v in changed if k != "name")
    text = ctx["run"].file("recipe.yaml").read_text()
    return (f"<p>Fields that differ from the defaults ({len(changed)}):</p>"
            f'<table class="recipe"><tr><th>field</th><th>value</th></tr>{rows}</table>'
            f"<details><summary>the resolved recipe.yaml (every field)</summary><pre>{_e(text)}</pre></details>")


def _changed_fields(default, value, prefix=""):
    out = []
    for key, v in value.items():
        d = default.get(key) if isinstance(default, dict) else None
        if isinstance(v, dict) and v and isinstance(d, dict):
            out += _changed_fields(d, v, f"{prefix}{key}.")
        elif v != d:
            out.append((prefix + key, v))
    return out


def data_section(ctx):
    data, names = ctx["data"], ctx["names"]
    k = len(names)
    train = np.bincount(data.train.labels, minlength=k)
    val = np.bincount(data.val.labels, minlength=k)
    shape = "x".join(str(d) for d in data.input_shape)
    ratio = train.max() / max(train.min(), 1)
    lines = [f"{len(data.train):,} training and {len(data.val):,} validation images, {k} classes, "
             f"{shape} pixels as the model takes them",
             f"training images per class: {train.min():,} to {train.max():,} (largest / smallest {ratio:.1f}x)"]
    lines += [_e(n) for n in data.notes]
    chart = class_bars(names, train, val) if k <= CHART_CLASSES else class_profile(names, train)
    return "<ul>" + "".join(f"<li>{x}</li>" for x in lines) + "</ul>" + chart


def class_bars(names, train, val):
    """One row per class: its share of the training split and of the validation split."""
    share_t, share_v = train / max(train.sum(), 1), val / max(val.sum(), 1)
    top = max(share_t.max(), share_v.max(), 1e-9)
    label_w, bar_w, row = 110, 420, 20
    height = row * len(names) + 30
    parts = [f'<svg class="chart" width="{label_w + bar_w + 160}" height="{height}" role="img" '
             f'aria-label="images per class">',
             f'<text x="{label_w}" y="12" class="legend"><tspan class="train">&#9632; train</tspan> '
             f'<tspan class="val">&#9632; validation</tspan> (bar = share of its split)</text>']
    for i, name in enumerate(names):
        y = 22 + i * row
        wt, wv = bar_w * share_t[i] / top, bar_w * share_v[i] / top
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{_e(_short(name))}</text>'
                     f'<rect class="train" x="{label_w}" y="{y}" width="{wt:.1f}" height="8"/>'
                     f'<rect class="val" x="{label_w}" y="{y + 9}" width="{wv:.1f}" height="8"/>'
                     f'<text x="{label_w + max(wt, wv) + 6:.1f}" y="{y + 13}">{train[i]:,} / {val[i]:,}</text>')
    return "".join(parts) + "</svg>"


def class_profile(names, train):
    """Too many classes to label: training images per class, sorted, plus the smallest ones."""
    order = np.argsort(-train, kind="stable")
    counts = train[order]
    w, h = 640, 160
    xs = np.linspace(0, w, len(counts))
    ys = h - h * counts / max(counts.max(), 1)
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    smallest = ", ".join(f"{_e(names[i])} ({train[i]:,})" for i in order[::-1][:10])
    return (f'<svg class="chart" width="{w + 10}" height="{h + 30}" role="img" aria-label="images per class, sorted">'
            f'<polyline class="profile" points="0,{h} {points} {w},{h}"/>'
            f'<text x="0" y="{h + 20}">{len(names)} classes sorted by training images ({counts.max():,} to '
            f'{counts.min():,}); names are not drawn above {CHART_CLASSES} classes</text></svg>'
            f"<p>The 10 smallest classes: {smallest}</p>")


def curves_section(ctx):
    run = ctx["run"]
    history = run.file("history.csv")
    if not history.is_file():
        return "<p>No history.csv in the run folder: nothing to plot.</p>"
    png = run.file("curves.png")
    if png.is_file():
        blob = png.read_bytes()
    else:  # plots were off for the run: draw them now, with the run's own plotting code
        buf = io.BytesIO()
        plot_history(history, buf)
        blob = buf.getvalue()
    with open(history) as f:
        rows = list(csv.DictReader(f))
    note = ""
    measured = [(i, float(r["val_top1"])) for i, r in enumerate(rows) if r.get("val_top1")]  # train.val_every
    if measured:
        best = max(measured, key=lambda item: item[1])
        note = (f"<p>{len(rows)} epochs; validation top-1 {measured[-1][1]:.4f} after epoch {measured[-1][0] + 1}, best "
                f"{best[1]:.4f} after epoch {best[0] + 1}. Read a validation loss that rises while the training loss falls as "
                f"overfitting.</p>")
    return note + _img(blob, "training curves", "plot")


def classes_section(ctx):
    report, names, data = ctx["report"], ctx["names"], ctx["data"]
    conf = np.asarray(report["confusion"])
    train = np.bincount(data.train.labels, minlength=len(names))
    order = sorted(range(len(report["per_class"])), key=lambda i: (report["per_class"][i]["f1"], i))
    rows = [_class_row(rank + 1, i, report["per_class"][i], conf, names, train) for rank, i in enumerate(order)]
    head = ("<tr><th>#</th><th>class</th><th>F1</th><th>precision</th><th>recall</th><th>validation images</th>"
            "<th>training images</th><th>most often predicted instead</th></tr>")
    weak = sum(report["per_class"][i]["f1"] < WEAK_F1 for i in order)
    intro = (f"<p>Sorted by F1, weakest first; {weak} of {len(order)} classes are weak "
             f'(F1 &lt; {WEAK_F1}, marked <span class="badge">weak</span>).</p>')
    if len(rows) <= CLASS_ROWS:
        return intro + f'<table class="classes">{head}{"".join(rows)}</table>'
    shown = CLASS_ROWS
    return (intro + f"<p>Showing the {shown} weakest of {len(rows)} classes; the other {len(rows) - shown} are in "
            f"the collapsed table below.</p>"
            f'<table class="classes">{head}{"".join(rows[:shown])}</table>'
            f"<details><summary>the other {len(rows) - shown} classes</summary>"
            f'<table class="classes">{head}{"".join(rows[shown:])}</table></details>')


def _class_row(rank, i, c, conf, names, train):
    off = conf[i].copy()
    off[i] = 0
    j = int(off.argmax())
    instead = f"{_e(names[j])} ({off[j]})" if off[j] else "-"
    weak = c["f1"] < WEAK_F1
    badge = ' <span class="badge">weak</span>' if weak else ""
    return (f'<tr{" class=weak" if weak else ""}><td>{rank}</td><td>{_e(c["name"])}{badge}</td>'
            f'<td>{c["f1"]:.3f}</td><td>{c["precision"]:.3f}</td><td>{c["recall"]:.3f}</td><td>{c["support"]}</td>'
            f"<td>{train[i]:,}</td><td>{instead}</td></tr>")


def confusions_section(ctx):
    report, probs, names, val = ctx["report"], ctx["probs"], ctx["names"], ctx["data"].val
    conf = np.asarray(report["confusion"])
    off = conf.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:PAIRS]
    pairs = [(int(a), int(b)) for a, b in zip(*np.unravel_index(flat, off.shape)) if off[a, b] > 0]
    if not pairs:
        return "<p>No validation image was misclassified.</p>"
    pred = probs.argmax(1)
    total = int(off.sum())
    out = [f"<p>The {len(pairs)} most frequent (true &rarr; predicted) pairs of {total:,} misclassified validation "
           f"images ({np.count_nonzero(off):,} distinct pairs). Each shows up to {PAIR_EXAMPLES} of its images, the "
           f"most confidently wrong first, beside a correctly classified image of the predicted class.</p>"]
    for a, b in pairs:
        idx = np.flatnonzero((val.labels == a) & (pred == b))
        idx = idx[np.argsort(-probs[idx, b], kind="stable")][:PAIR_EXAMPLES]
        cards = [_card(image, f"p({_e(names[b])}) {probs[i, b]:.2f}") for i, image in zip(idx, val.take(idx))]
        right = np.flatnonzero((val.labels == b) & (pred == b))
        if len(right):
            best = right[np.argmax(probs[right, b])]
            cards.append(_card(val.take([best])[0], f"a real {_e(names[b])}", "reference"))
        share = off[a, b] / max(conf[a].sum(), 1)
        out.append(f'<div class="pair"><h3>{_e(names[a])} &rarr; {_e(names[b])}: {off[a, b]} images '
                   f'({share:.0%} of the {_e(names[a])} images)</h3><div class="grid">{"".join(cards)}</div></div>')
    out[1:] = [f'<div class="pairs">{"".join(out[1:])}</div>']
    confusion_png = ctx["run"].file("val_confusion.png")
    if confusion_png.is_file() and len(names) <= 30:
        out.append("<details><summary>the full confusion matrix (rows: true class, normalized)</summary>"
                   f'{_img(confusion_png.read_bytes(), "confusion matrix", "plot")}</details>')
    return "".join(out)


def wrong_section(ctx):
    probs, names, val = ctx["probs"], ctx["names"], ctx["data"].val
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != val.labels)
    if not len(wrong):
        return "<p>No validation image was misclassified.</p>"
    top = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:WRONG_IMAGES]
    captions = [f"true {_e(names[val.labels[i]])}<br>predicted {_e(names[pred[i]])} {probs[i, pred[i]]:.2f}<br>"
                f"p(true) {probs[i, val.labels[i]]:.2f}" for i in top]
    cards = [_card(image, caption) for image, caption in zip(val.take(top), captions)]
    return (f"<p>The {len(top)} of {len(wrong):,} misclassified validation images with the highest predicted "
            "probability: label errors, near-duplicate classes and shortcuts show up here first.</p>"
            f'<div class="grid">{"".join(cards)}</div>')


def calibration(probs, labels, bins=BINS):
    """Reliability per equal-width bin of the top-1 probability, and the expected calibration
    error: the bins' |accuracy - mean confidence|, weighted by their share of the images."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        rows.append({"lo": b / bins, "hi": (b + 1) / bins, "count": n,
                     "accuracy": float(correct[sel].mean()) if n else None,
                     "confidence": float(conf[sel].mean()) if n else None})
    ece = sum(r["count"] / len(labels) * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"])
    return {"bins": rows, "ece": float(ece), "accuracy": float(correct.mean()), "confidence": float(conf.mean())}


def reliability_svg(cal, side=300, pad=36):
    """Accuracy per bin against the diagonal (a calibrated model's bars touch it), the gap to
    the bin's mean confidence, and below it how many images each bin holds."""
    base = pad + side  # y of the probability axis
    parts = [f'<svg class="chart" width="{side + 2 * pad}" height="{base + 110}" role="img" aria-label="reliability diagram">',
             f'<rect x="{pad}" y="{pad}" width="{side}" height="{side}" class="frame"/>',
             f'<line x1="{pad}" y1="{base}" x2="{base}" y2="{pad}" class="ideal"/>']
    most = max(r["count"] for r in cal["bins"])
    w = side / len(cal["bins"])
    for r in cal["bins"]:
        x = pad + side * r["lo"]
        if r["count"]:
            acc, conf = side * r["accuracy"], side * r["confidence"]
            parts.append(f'<rect class="acc" x="{x:.1f}" y="{base - acc:.1f}" width="{w - 1:.1f}" height="{acc:.1f}">'
                         f'<title>{r["count"]} images, accuracy {r["accuracy"]:.3f}, confidence {r["confidence"]:.3f}'
                         f'</title></rect><rect class="gap" x="{x:.1f}" y="{base - max(acc, conf):.1f}" '
                         f'width="{w - 1:.1f}" height="{abs(acc - conf):.1f}"/>')
        hist = 50 * r["count"] / max(most, 1)
        parts.append(f'<rect class="count" x="{x:.1f}" y="{base + 80 - hist:.1f}" width="{w - 1:.1f}" height="{hist:.1f}"/>')
    for t in (0, 0.5, 1):
        parts.append(f'<text x="{pad + side * t:.0f}" y="{base + 14}" text-anchor="middle">{t:g}</text>'
                     f'<text x="{pad - 4}" y="{base - side * t + 4:.0f}" text-anchor="end">{t:g}</text>')
    parts.append(f'<text x="{pad}" y="{pad - 8}">accuracy per bin (blue), gap to its mean confidence (red)</text>'
                 f'<text x="{pad + side / 2}" y="{base + 26}" text-anchor="middle">top-1 probability</text>'
                 f'<text x="{pad}" y="{base + 96}">images per bin (grey, tallest = {most:,})</text></svg>')
    return "".join(parts)


def calibration_section(ctx):
    cal = calibration(ctx["probs"], ctx["data"].val.labels)
    over = cal["confidence"] - cal["accuracy"]
    lean = "over-confident" if over > 0 else "under-confident"
    smoothing = ctx["recipe"].train.label_smoothing
    if smoothing:  # it trains the model to put at most 1 - eps on a class: confidence drops by design
        lean += f" (the recipe trains with label smoothing {smoothing:g}, which lowers confidence by design)"
    rows = "".join(f'<tr><td>{r["lo"]:.2f}-{r["hi"]:.2f}</td><td>{r["count"]}</td>'
                   f'<td>{r["accuracy"]:.3f}</td><td>{r["confidence"]:.3f}</td></tr>'
                   for r in cal["bins"] if r["count"])
    return (f'<p>Expected calibration error <b class="ece" data-value="{cal["ece"]!r}">{cal["ece"]:.4f}</b> '
            f"({BINS} equal-width bins of the top-1 probability over [0, 1]; each bin's |accuracy &minus; mean "
            f"confidence| weighted by its share of the {len(ctx['probs']):,} validation images). Mean confidence "
            f"{cal['confidence']:.3f} against accuracy {cal['accuracy']:.3f}: {lean} by {abs(over):.3f}.</p>"
            f'<div class="row">{reliability_svg(cal)}<table class="bins"><tr><th>bin</th><th>images</th>'
            f"<th>accuracy</th><th>confidence</th></tr>{rows}</table></div>")


def augment_section(ctx):
    """The recipe's own training pipeline on a batch of training images (the augment preview's grid)."""
    recipe = ctx["recipe"]
    buf = io.BytesIO()
    write_preview(recipe, buf, PREVIEW_IMAGES, data=ctx.get("data"), echo=lambda *a: None)
    ops = [op["name"] for op in recipe.augment.ops]
    a = recipe.augment
    policy = [f"pad-crop {a.crop_pad} ({a.pad_mode})" if a.crop_pad else None, "flip" if a.flip else None, *ops,
              f"MixUp {a.mixup_alpha}" if a.mixup_alpha else None, f"CutMix {a.cutmix_alpha}" if a.cutmix_alpha else None]
    policy = ", ".join(p for p in policy if p) or "none"
    smoothing = recipe.train.label_smoothing
    soft = f", a single probability below 1 is label smoothing {smoothing:g}" if smoothing else ""
    return (f"<p>{PREVIEW_IMAGES} training images as the training pipeline delivers them (policy: {_e(policy)}); "
            f"a title with two classes is a mixed label{soft}. Look for crops that cut the object away or flips "
            "that change the class.</p>" + _img(_shrunk(buf.getvalue(), PREVIEW_WIDTH), "augmentation preview", "plot"))


def exports_section(ctx):
    run = ctx["run"]
    reports = [(p, _read_json(p)) for p in sorted(run.dir.glob("model_*.json"))]
    compare = _read_json(run.file("compare/compare.json")) or {}
    reports += [(Path(r["file"]), {"quant": r["mode"], "size_bytes": r["size_bytes"], "tflite": {"top1": r["top1"]},
                                   "keras": {"top1": r["keras_top1"]}, "agreement": r["agreement"],
                                   "input": {"dtype": r["input"]}, "latency_ms": r.get("latency_ms_1t"),
                                   "latency_from": "compare.json (median of interleaved rounds)"})
                for r in compare.get("rows", [])]
    reports = [(p, r) for p, r in reports if r and "size_bytes" in r]
    if not reports:
        return ("<p>No export in this run folder (set <code>output.export</code> in the recipe, or run "
                "<code>kclassify export RUN --tflite</code>).</p>")
    rows = [_export_row(run, p, r) for p, r in reports]
    failed = "".join(f"<li>{_e(mode)}: {_e(why)}</li>" for mode, why in compare.get("failed", {}).items())
    return ('<table class="exports"><tr><th>file</th><th>mode</th><th>input</th><th>size</th><th>gzip</th>'
            "<th>top-1 (.tflite)</th><th>top-1 (Keras)</th><th>agreement</th><th>latency, batch 1, 1 thread</th></tr>"
            f'{"".join(rows)}</table>'
            f"<p>Top-1 and agreement: the .tflite run through LiteRT on the validation split. Latency: from "
            f"compare.json where <code>--compare</code> ran, else measured now by this report (median of "
            f"{LATENCY_RUNS} runs on random pixels, {_e(cpu_name())}).</p>"
            + (f"<p>Modes that did not export:</p><ul>{failed}</ul>" if failed else ""))


def _export_row(run, path, r):
    file = run.dir / path if not path.is_absolute() else path
    tflite = file.with_suffix(".tflite") if file.suffix == ".json" else file
    name = tflite.relative_to(run.dir) if tflite.is_relative_to(run.dir) else tflite
    lat = r.get("latency_ms")
    if lat is None and "tflite" in r and tflite.is_file():
        lat = kitlib.latency(tflite, 1, LATENCY_RUNS)["median_ms"]
    top1 = r.get("tflite", {}).get("top1")
    keras_top1 = r.get("keras", {}).get("top1")
    cells = [_e(str(name)), _e(r.get("quant", "?")), _e(r.get("input", {}).get("dtype", "?")),
             f"{r['size_bytes']:,} B", f"{r['gzip_bytes']:,} B" if "gzip_bytes" in r else "-",
             "-" if top1 is None else f"{top1:.2%}", "-" if keras_top1 is None else f"{keras_top1:.2%}",
             "-" if "agreement" not in r else f"{r['agreement']:.2%}",
             "-" if lat is None else f"{lat:.3f} ms"]
    note = f'<tr class="note"><td colspan="9">{_e(r["note"])}</td></tr>' if "note" in r else ""
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" + note


# ---------------------------------------------------------------------------- small helpers


def cpu_name():
    """The CPU model (for timings), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores"


def _e(text):
    return html.escape(str(text), quote=True)


def _short(name, width=16):
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def _metric(key, value, pct=False):
    """A figure from metrics.json, with its exact value kept for machines (data-value)."""
    shown = f"{value:.2%}" if pct else (f"{value:,}" if isinstance(value, int) else f"{value:,.4g}")
    return f'<span class="metric" data-metric="{_e(key)}" data-value="{_e(repr(value))}">{shown}</span>'


def _read_json(path):
    return read_json(path)


def _png(image):
    """A uint8 HxWxC (C 1 or 3) image as PNG bytes, shrunk to at most THUMB pixels a side."""
    im = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if max(im.size) > THUMB:
        im.thumbnail((THUMB, THUMB), Image.BILINEAR)
    return _encode(im)


def _encode(im):
    """PNG bytes; colour images with an adaptive 256-colour palette (a third of the bytes of
    RGB for photographs, and no visible loss at thumbnail size)."""
    if im.mode != "L":
        im = im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _shrunk(blob, width):
    """A PNG (matplotlib's) at most `width` pixels wide, re-encoded with a palette."""
    im = Image.open(io.BytesIO(blob))
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    return _encode(im)


def _img(blob, alt, cls):
    return f'<img class="{cls}" alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(blob).decode()}">'


def _card(image, caption, cls="example"):
    return f'<figure class="{cls}">{_img(_png(image), "validation image", "thumb")}<figcaption>{caption}</figcaption></figure>'


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;margin:0;background:#f6f7f9}
header{background:#20303f;color:#fff;padding:14px 24px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0 0 8px;color:#c9d3dc;font-size:12px}nav a{color:#9fd0ff;margin-right:12px;font-size:13px}
main{padding:8px 24px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde2e7;border-radius:6px;padding:4px 18px 14px;margin:14px 0}
h2{font-size:18px;margin:12px 0 8px}h3{font-size:14px;margin:10px 0 6px}
table{border-collapse:collapse;margin:6px 0}td,th{border-bottom:1px solid #e6e9ec;padding:3px 10px;text-align:left}
th{background:#f0f2f4}table.metrics td{font-size:18px;font-weight:600}
tr.weak td{background:#fff1f0}.badge{background:#d93025;color:#fff;border-radius:3px;padding:0 5px;font-size:11px}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:420px;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:8px}.pairs{display:flex;flex-wrap:wrap;gap:6px 28px}
figure{margin:0;width:112px;font-size:11px;text-align:center}
figure.reference{outline:2px solid #2e7d32}
img.thumb{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee;border:1px solid #ccc}
img.plot{max-width:100%;height:auto}.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
svg.chart text{font-size:11px;fill:#333}svg .train{fill:#3b78c2}svg .val{fill:#f0a030}
svg tspan.train{fill:#3b78c2}svg tspan.val{fill:#d08010}svg .profile{fill:#cfe0f3;stroke:#3b78c2}
svg .frame{fill:none;stroke:#999}svg .ideal{stroke:#555;stroke-dasharray:4 3}svg .acc{fill:#3b78c2}
svg .gap{fill:#d93025;fill-opacity:.35}svg .count{fill:#999}
details{margin:8px 0}summary{cursor:pointer;color:#2458a6}tr.note td{color:#a33;font-size:12px}
"""
