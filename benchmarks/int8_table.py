"""int8 you can trust, in one table per fine-tuned run: float32, post-training int8 without and with
bias correction (before and after it became the default), int8 with a max-drop limit (--max-drop;
refused when no attempt meets it: the row then gives the best attempt's flips and no file) and QAT
int8, each a .tflite measured with LiteRT on the run's validation split: top-1, flip rate (the
share of validation images whose class differs from the Keras model's), size, batch-1 latency (1
and 2 threads, interleaved rounds, so the ratios within one run compare). Also what the max-drop
search kept in float and every attempt, and what QAT ran (steps, rate, when the activation ranges
settled) and which file `kclassify qat`'s default (keep the better) would ship.

Prints one JSON object per run on stdout (the figures) and a Markdown table per run on stderr,
with the progress. From the repository root:

    python benchmarks/int8_table.py RUN [RUN ...] [--max-drop 0.5] [--qat-steps N]

Every file is written into the run folder (model_float32.tflite, model_int8_uncorrected.tflite,
model_int8.tflite, model_int8_budget.tflite, model_qat_int8.tflite and their .json reports).
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine():
    """The CPU model, core count and the SIMD flags that change int8 and float speed."""
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        model = next(l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name"))
        have = set(next(l for l in cpu.splitlines() if l.startswith("flags")).split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in have)
    except (OSError, StopIteration):
        model, flags = platform.processor(), ""
    return f"{model}, {os.cpu_count()} cores, {flags}"


def latencies(files, rounds=3, runs=100):
    """{file: {threads: median ms}}, batch 1, measured in interleaved rounds."""
    from kclassify.kit import kitlib

    kit = kitlib
    out = {f: {1: [], 2: []} for f in files}
    for _ in range(rounds):
        for threads in (1, 2):
            for f in files:
                out[f][threads].append(kit.latency(f, threads, runs)["median_ms"])
    return {f: {t: float(np.median(v)) for t, v in d.items()} for f, d in out.items()}


def timed(fn, *args, **kwargs):
    start = time.time()
    return fn(*args, **kwargs), round(time.time() - start, 1)


def table(run, max_drop, qat_steps, echo):
    """The four files of one run, measured; returns the summary dict."""
    from kclassify.commands.export import ExportJob
    from kclassify.commands.qat import qat

    from kclassify.errors import MaxDropNotMet

    run = Path(run)
    job = ExportJob(run)
    rows = [("float32",) + timed(job.export, "float32", run / "model_float32.tflite", max_drop=None),
            ("int8, no bias correction",) + timed(job.export, "int8", run / "model_int8_uncorrected.tflite",
                                                  max_drop=None, bias_correction=False),
            ("int8 (default: bias-corrected)",) + timed(job.export, "int8", run / "model_int8.tflite", max_drop=None)]
    start = time.time()
    try:
        budget = job.export("int8", run / "model_int8_budget.tflite", max_drop=max_drop, echo=echo)
        b = budget["max_drop_search"]
        rows.append((f"int8 --max-drop {max_drop:g}", budget, round(time.time() - start, 1)))
    except MaxDropNotMet as refused:
        b = refused.summary
    q, seconds = timed(qat, run, steps=qat_steps, keep="qat", out=run / "model_qat_int8.tflite", echo=echo)
    rows.append(("QAT int8", q, seconds))
    lat = latencies([r["file"] for _, r, _ in rows])
    both = q["comparison"]
    default_ships = ("QAT int8" if both["qat"]["agreement"] >= both["post_training"]["agreement"]
                     else "post-training int8")
    return {
        "run": str(run), "recipe": job.run.recipe.name, "model": job.run.recipe.model.name,
        "input_size": int(job.model.input_shape[1]), "val_images": len(job.val), "machine": machine(),
        "rows": [{"file": name, "top1": r["tflite"]["top1"], "keras_top1": r["keras"]["top1"],
                  "drop_points": round((r["keras"]["top1"] - r["tflite"]["top1"]) * 100, 2),
                  "flip_points": round((1 - r["agreement"]) * 100, 2),
                  "agreement": r["agreement"], "size_bytes": r["size_bytes"], "ms_1t": lat[r["file"]][1],
                  "ms_2t": lat[r["file"]][2], "calibration_images": r.get("calibration_images"),
                  "seconds": seconds} for name, r, seconds in rows],
        "budget": {k: b[k] for k in ("met", "message", "float_layers", "calibration_images", "search_images",
                                     "search_source", "search_views", "flip_points_search", "flip_margin95_search",
                                     "eval_drop_points", "eval_within_max_drop", "eval_note") if k in b},
        "budget_attempts": [{k: a[k] for k in ("attempt", "note", "float_layers", "calibration_images",
                                               "flip_points", "flip_margin95", "size_bytes")} for a in b["attempts"]],
        "qat": {"steps": q["steps"], "lr": q["lr"], "optimizer": q["optimizer"], "settings": q["settings"],
                "trainable": q["trainable"], "ranges_settled_at_step": q["ranges_settled_at_step"],
                "translation_max_abs_diff": q["worker"]["translation_max_abs_diff"],
                "train_seconds": q["worker"].get("train_seconds"), "default_keep_ships": default_ships},
    }


def markdown(summary):
    lines = [f"{summary['run']} ({summary['model']}, {summary['input_size']}x{summary['input_size']}, "
             f"{summary['val_images']} validation images; {summary['machine']})", "",
             "| file | top-1 | drop (points) | flips (validation) | size | ms @1T | ms @2T |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['file']} | {r['top1'] * 100:.2f}% | {r['drop_points']:.2f} | {r['flip_points']:.2f}% | "
                     f"{r['size_bytes'] / 1e3:,.0f} kB | {r['ms_1t']:.2f} | {r['ms_2t']:.2f} |")
    if not summary["budget"]["met"]:
        lines.append(f"| int8 --max-drop: refused (no file) | | | best attempt flips {summary['budget']['flip_points_search']:.2f}"
                     f"% of the search images | | | |")
    lines += ["", f"budget: {summary['budget']['message']}"
              + (f"; {summary['budget']['eval_note']}" if "eval_note" in summary["budget"] else ""),
              f"QAT: {summary['qat']['settings']}; `kclassify qat` by default ships {summary['qat']['default_keep_ships']}"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders of `kclassify finetune` (or fit)")
    ap.add_argument("--max-drop", type=float, default=0.5, help="the budget row's --max-drop (top-1 points)")
    ap.add_argument("--qat-steps", type=int, default=None, help="default: the recipe's (qat.settle_steps)")
    args = ap.parse_args()
    from kclassify import runtime

    runtime.quiet_tensorflow()
    progress = lambda *a: print(*a, file=sys.stderr, flush=True)
    for run in args.runs:
        start = time.time()
        summary = table(run, args.max_drop, args.qat_steps, echo=progress)
        summary["wall_seconds"] = round(time.time() - start, 1)
        print(json.dumps(summary), flush=True)
        progress(markdown(summary))


if __name__ == "__main__":
    main()
