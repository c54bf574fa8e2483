"""CIFAR-10 validation top-1 against training minutes, from the recorded runs.

    python benchmarks/plot_budget.py [--csv benchmarks/results/cifar10_budget.csv] [--out docs/img/cifar10_budget.png]
                                     [--with-jpeg]

Reads the table of recorded runs (one row a run: recipe, data, budget_minutes, val_top1, val_top1_tta,
machine, date, source), draws one line per recipe and data copy through the mean at each budget, with every
run as a dot, and prints a JSON summary. Two panels: plain top-1 and top-1 with the recipe's TTA, since the
plain-Keras baseline has no TTA and the TTA gain (0.5-1.5 points) would otherwise hide in the comparison.
`cifar10_fast60` (the same network and schedule given 60 minutes) continues the `cifar10_fast` line. Only
the lossless copy's runs are drawn unless --with-jpeg: the JPEG copy's runs (dashed, open markers) are kept
for history and are not comparable with published CIFAR-10 figures. A run without a time budget (cifar10_airbench94: 10 epochs) is a dotted level.

Only numpy and matplotlib: the figures are measured elsewhere (benchmarks/RESULTS.md), so this needs no
TensorFlow and runs in about a second.
"""

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or the device boxes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "cifar10_budget.csv"
DEFAULT_OUT = ROOT / "docs" / "img" / "cifar10_budget.png"
COLUMNS = ["recipe", "data", "budget_minutes", "val_top1", "val_top1_tta", "machine", "date", "source"]
STYLE = {  # data copy -> line and marker style
    "lossless": {"linestyle": "-", "fillstyle": "full"},
    "jpeg": {"linestyle": "--", "fillstyle": "none"},
}
LINE = {"cifar10_fast60": "cifar10_fast"}  # recipes drawn on another recipe's line: the same network, a longer budget
METRICS = [("val_top1", "plain"), ("val_top1_tta", "with the recipe's TTA")]


def number(text):
    """A float, or None for an empty cell."""
    text = text.strip()
    return float(text) if text else None


def read_runs(path):
    """The CSV's rows, numbers parsed; refuses a file whose columns differ from COLUMNS."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise SystemExit(f"{path}: columns {reader.fieldnames}, expected {COLUMNS}")
        rows = list(reader)
    for row in rows:
        for key in ("budget_minutes", "val_top1", "val_top1_tta"):
            row[key] = number(row[key])
        if row["data"] not in STYLE:
            raise SystemExit(f"{path}: data {row['data']!r} is not one of {sorted(STYLE)}")
    return rows


def stats(values):
    values = np.asarray(values, dtype=float)
    return {"n": int(values.size), "mean": round(float(values.mean()), 2),
            "min": round(float(values.min()), 2), "max": round(float(values.max()), 2)}


def summarize(rows):
    """Per recipe and data copy: the runs at each budget (or with no budget), plain and TTA."""
    series = defaultdict(lambda: defaultdict(lambda: {"val_top1": [], "val_top1_tta": []}))
    for row in rows:
        budget = row["budget_minutes"]
        cell = series[(LINE.get(row["recipe"], row["recipe"]), row["data"])][budget]
        for key, _ in METRICS:
            if row[key] is not None:
                cell[key].append(row[key])
    summary = []
    for (recipe, data), budgets in series.items():
        points = []
        for budget in sorted(budgets, key=lambda b: (b is None, b or 0)):
            entry = {"budget_minutes": budget}
            for key, _ in METRICS:
                if budgets[budget][key]:
                    entry[key] = stats(budgets[budget][key])
            points.append(entry)
        summary.append({"recipe": recipe, "data": data, "points": points})
    return summary


def line_label(item, rows):
    """'recipe (longer recipe at N min), data copy' for a line that carries another recipe's runs."""
    name = item["recipe"]
    for recipe in sorted(r for r, line in LINE.items() if line == item["recipe"]):
        minutes = sorted({r["budget_minutes"] for r in rows if r["recipe"] == recipe and r["budget_minutes"]})
        if minutes:
            name += f" ({recipe} at {', '.join(f'{m:g}' for m in minutes)} min)"
    return f"{name}, {'lossless' if item['data'] == 'lossless' else 'JPEG copy'}"


def draw(summary, rows, out):
    budgets = sorted({r["budget_minutes"] for r in rows if r["budget_minutes"] is not None})
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    recipe_color = {}
    for item in summary:
        recipe_color.setdefault(item["recipe"], colors[len(recipe_color) % len(colors)])
    for ax, (key, title) in zip(axes, METRICS):
        for item in summary:
            style, color = STYLE[item["data"]], recipe_color[item["recipe"]]
            label = line_label(item, rows)
            timed = [p for p in item["points"] if p["budget_minutes"] is not None and key in p]
            untimed = [p for p in item["points"] if p["budget_minutes"] is None and key in p]
            if timed:
                x = [p["budget_minutes"] for p in timed]
                y = [p[key]["mean"] for p in timed]
                ax.plot(x, y, marker="o", markersize=7, color=color, label=label, **style)
                runs = [r for r in rows if (LINE.get(r["recipe"], r["recipe"]), r["data"]) == (item["recipe"], item["data"])
                        and r["budget_minutes"] is not None and r[key] is not None]
                ax.scatter([r["budget_minutes"] for r in runs], [r[key] for r in runs], s=12, color=color,
                           alpha=0.45, zorder=3)
            for p in untimed:  # no budget: a level across the plot, named on the line itself
                level = p[key]["mean"]
                dots = (0, (1, 1)) if item["data"] == "lossless" else (0, (2, 4))
                ax.axhline(level, color=color, linestyle=dots, linewidth=1.6, label=f"{label} (10 epochs, no budget)")
                ax.text(budgets[0] - 2.7, level + 0.3, f"{item['recipe']}, 10 epochs, {label.split(', ')[-1]}: {level:.2f}",
                        color=color, fontsize=7.5)
        if key == "val_top1_tta":
            plain_only = sorted({item["recipe"] for item in summary
                                 if not any("val_top1_tta" in p for p in item["points"])})
            if plain_only:
                ax.text(0.98, 0.03, "no TTA, so only in the left panel:\n" + "\n".join(plain_only),
                        transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="0.35")
        ax.set_title(f"validation top-1, {title}")
        ax.set_xlabel("training budget (minutes, whole command, 2-core CPU)")
        ax.set_xticks(budgets)
        ax.set_xlim(budgets[0] - 3, budgets[-1] + 3)
        top = max(r[k] for r in rows for k, _ in METRICS if r[k] is not None)
        ax.set_ylim(top=top + 1.2)  # room for the labels of the highest level
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%) on the 5,000-image validation split")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    jpeg = any(r["data"] == "jpeg" for r in rows)
    fig.suptitle("CIFAR-10 on 2-core CPUs: lines through the mean at each budget, dots are single runs"
                 + ("; dashed/open: JPEG copy (superseded)" if jpeg else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.17, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="recorded runs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write (default: %(default)s)")
    parser.add_argument("--with-jpeg", action="store_true", help="also the superseded JPEG copy's runs")
    args = parser.parse_args(argv)
    rows = [r for r in read_runs(args.csv) if args.with_jpeg or r["data"] == "lossless"]
    summary = summarize(rows)
    draw(summary, rows, args.out)
    print(json.dumps({"csv": str(args.csv), "out": str(args.out), "runs": len(rows), "series": summary}, indent=2))


if __name__ == "__main__":
    main()
