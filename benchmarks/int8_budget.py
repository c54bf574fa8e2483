"""int8 you can trust: for each fine-tuned run, one table of float32, post-training int8 (the
default export), int8 with an accuracy budget (--max-drop) and QAT int8: top-1 on the run's
validation split, size, batch-1 latency (1 and 2 threads, interleaved rounds so ratios compare),
and what the budget search kept in float. Prints one JSON line per run and a Markdown table.
From the repository root:

    python benchmarks/int8_budget.py RUN [RUN ...] [--max-drop 0.5] [--qat-steps N]
    python benchmarks/int8_budget.py RUN --calibration 50,100,300,1000,3000 --seeds 3
    python benchmarks/int8_budget.py RUN --qat-sweep 0.03,0.1,0.3,1 --qat-steps 800

--calibration: the post-training int8 drop (validation split, and the budget search's held-out
training images) against the number of calibration images, several random draws each (the
measurements behind export.calibration's "auto" default). --qat-sweep: QAT at fractions of the
run's last peak learning rate, with the activation-range log (the measurements behind
qat.lr_fraction and qat.settle_steps).
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine():
    flags = ""
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        model = next(l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name"))
        have = set(next(l for l in cpu.splitlines() if l.startswith("flags")).split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in have)
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {__import__('os').cpu_count()} cores, {flags}"


def latencies(files, rounds=3, runs=100):
    """{file: {threads: median ms}} measured in interleaved rounds."""
    from kclassify.kit import kitlib

    kit = kitlib()
    out = {f: {1: [], 2: []} for f in files}
    for _ in range(rounds):
        for threads in (1, 2):
            for f in files:
                out[f][threads].append(kit.latency(f, threads, runs)["median_ms"])
    return {f: {t: float(np.median(v)) for t, v in d.items()} for f, d in out.items()}


def table(run, max_drop, qat_steps, echo):
    from kclassify.export import ExportJob
    from kclassify.qat.run import qat

    run = Path(run)
    job = ExportJob(run)
    rows = []
    t0 = time.time()
    f32 = job.export("float32", run / "model_float32.tflite", max_drop=None)
    rows.append(("float32", f32, time.time() - t0))
    t0 = time.time()
    i8 = job.export("int8", run / "model_int8.tflite", max_drop=None)
    rows.append(("int8 (default)", i8, time.time() - t0))
    t0 = time.time()
    budget = job.export("int8", run / "model_int8_budget.tflite", max_drop=max_drop, echo=echo)
    rows.append((f"int8 --max-drop {max_drop:g}", budget, time.time() - t0))
    t0 = time.time()
    q = qat(run, steps=qat_steps, keep="qat", out=run / "model_qat_int8.tflite", echo=echo)
    rows.append(("QAT int8", q, time.time() - t0))
    lat = latencies([r["file"] for _, r, _ in rows])
    shipped = ("QAT" if q["comparison"]["qat"]["tflite"]["top1"] >= q["comparison"]["post_training"]["tflite"]["top1"]
               else "post-training int8")
    summary = {"run": str(run), "val_images": len(job.val), "machine": machine(), "rows": [
        {"file": name, "top1": r["tflite"]["top1"], "keras_top1": r["keras"]["top1"], "agreement": r["agreement"],
         "size_bytes": r["size_bytes"], "ms_1t": lat[r["file"]][1], "ms_2t": lat[r["file"]][2],
         "seconds": round(seconds, 1)} for name, r, seconds in rows],
        "budget": {k: budget["budget"][k] for k in ("met", "message", "float_layers", "calibration_images",
                                                    "drop_points_search", "search_images", "eval_drop_points")},
        "budget_attempts": [{k: a[k] for k in ("attempt", "note", "float_layers", "drop_points", "size_bytes",
                                               "latency_ms_1t")} for a in budget["budget"]["attempts"]],
        "qat": {"steps": q["steps"], "lr": q["lr"], "optimizer": q["optimizer"],
                "ranges_settled_at_step": q["ranges_settled_at_step"],
                "translation_max_abs_diff": q["worker"]["translation_max_abs_diff"],
                "train_seconds": q["worker"]["train_seconds"], "default_keep_would_ship": shipped}}
    return summary


def markdown(summary):
    lines = [f"{summary['run']} ({summary['val_images']} validation images; {summary['machine']})", "",
             "| file | top-1 | agreement with Keras | size | ms @1T | ms @2T |", "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['file']} | {r['top1'] * 100:.2f}% | {r['agreement'] * 100:.2f}% | "
                     f"{r['size_bytes'] / 1e3:,.0f} kB | {r['ms_1t']:.3f} | {r['ms_2t']:.3f} |")
    lines.append("")
    lines.append(f"budget: {summary['budget']['message']}")
    return "\n".join(lines)


def calibration_sweep(run, counts, seeds):
    """The post-training int8 drop against the calibration count (several draws each)."""
    from kclassify.evaluate import predict
    from kclassify.export import ExportJob
    from kclassify.export.calibration import calibration_images
    from kclassify.export.convert import convert
    from kclassify.kit import kitlib

    job = ExportJob(run)
    kit = kitlib()
    idx, s_images, s_labels = job.search
    float_val = float((job.keras_probs.argmax(1) == np.asarray(job.val.labels)).mean())
    float_search = float((predict(job.model, s_images).argmax(1) == s_labels).mean())
    print(json.dumps({"run": str(run), "float_val": float_val, "float_search": float_search,
                      "val_images": len(job.val), "search_images": len(idx), "machine": machine()}), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.tflite"
        for count in counts:
            for seed in range(seeds):
                t0 = time.time()
                calib = calibration_images(job.calib_split, count, seed, exclude=idx, load=job.images)
                path.write_bytes(convert(job.model, "int8", calib))
                model = kit.Classifier(path)
                val = float((model.predict(job.val_images).argmax(1) == np.asarray(job.val.labels)).mean())
                search = float((model.predict(s_images).argmax(1) == s_labels).mean())
                print(json.dumps({"count": len(calib), "seed": seed, "drop_val_points": round((float_val - val) * 100, 2),
                                  "drop_search_points": round((float_search - search) * 100, 2),
                                  "seconds": round(time.time() - t0, 1)}), flush=True)


def qat_sweep(run, fractions, steps):
    """QAT at fractions of the run's last peak rate: fake-quant and .tflite top-1, range settling."""
    from kclassify.qat.run import last_peak_lr, qat
    from kclassify.run import Run

    peak = last_peak_lr(Run.load(run).recipe)
    for fraction in fractions:
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.time()
            rep = qat(run, steps=steps, lr=fraction * peak, keep="qat", out=Path(folder) / "q.tflite",
                      echo=lambda *a: None)
            both = rep["comparison"]
            print(json.dumps({"run": str(run), "lr_fraction": fraction, "lr": rep["lr"], "optimizer": rep["optimizer"],
                              "steps": rep["steps"], "qat_top1": both["qat"]["tflite"]["top1"],
                              "ptq_top1": both["post_training"]["tflite"]["top1"], "float_top1": both["float_top1"],
                              "fake_quant_top1_before": rep["worker"]["fake_quant_top1_before"],
                              "ranges_settled_at_step": rep["ranges_settled_at_step"],
                              "range_log": [(r["step"], round(r["max_rel_change"], 4), round(r["median_rel_change"], 5))
                                            for r in rep["worker"]["range_log"]],
                              "seconds": round(time.time() - t0, 1), "machine": machine()}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--qat-steps", type=int, default=None, help="default: the recipe's (qat.settle_steps)")
    ap.add_argument("--calibration", help="comma-separated calibration counts: run the calibration sweep")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--qat-sweep", help="comma-separated fractions of the run's last peak learning rate")
    args = ap.parse_args()
    from kclassify import runtime

    runtime.quiet_tensorflow()
    for run in args.runs:
        if args.calibration:
            calibration_sweep(run, [int(c) for c in args.calibration.split(",")], args.seeds)
        elif args.qat_sweep:
            qat_sweep(run, [float(f) for f in args.qat_sweep.split(",")], args.qat_steps)
        else:
            summary = table(run, args.max_drop, args.qat_steps, echo=lambda *a: print(*a, file=sys.stderr, flush=True))
            print(json.dumps(summary), flush=True)
            print(markdown(summary), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
