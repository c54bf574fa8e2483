"""Every TFLite export mode of trained runs, measured in one process: size, top-1 on the run's
held-out split, agreement with Keras, batch-1 latency with 1 and 2 threads (interleaved rounds,
so ratios are comparable), XNNPACK delegation. Writes RUN/compare/compare.md/.json and prints
one JSON line per run with the headline ratios. From the repository root:

    python benchmarks/export.py runs/cifar10_resnet20 runs/cifar10_mobilenet_v3 [--runs 200]
"""
import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def summarize(run, rows):
    by = {r["mode"]: r for r in rows}
    f32, i8 = by["float32"], by["int8"]
    return {
        "run": str(run),
        "float32_top1": f32["top1"], "int8_top1": i8["top1"],
        "int8_minus_float32_points": round((i8["top1"] - f32["top1"]) * 100, 2),
        "int8_size_ratio": round(i8["size_ratio"], 4),
        "int8_speedup_1t": round(f32["latency_ms_1t"] / i8["latency_ms_1t"], 2),
        "int8_speedup_2t": round(f32["latency_ms_2t"] / i8["latency_ms_2t"], 2),
        "int8_partitions": i8["delegate"]["partitions"],
        "int8_not_delegated": i8["delegate"]["not_delegated"],
        "modes": {m: {"top1": r["top1"], "agreement": r["agreement"], "size_ratio": round(r["size_ratio"], 4),
                      "ms_1t": round(r["latency_ms_1t"], 4), "ms_2t": round(r["latency_ms_2t"], 4)}
                  for m, r in by.items()},
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--runs-per-timing", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from kclassify import runtime
    from kclassify.commands.export import ExportJob
    from kclassify.tflite.compare import compare_modes

    runtime.quiet_tensorflow()
    for run in args.runs:
        job = ExportJob(run)
        rows = compare_modes(job, runs=args.runs_per_timing, rounds=args.rounds, echo=lambda *a: None)
        summary = summarize(run, rows)
        summary["eval_images"] = int(len(job.val.labels))
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
