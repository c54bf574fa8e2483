#!/usr/bin/env python3
"""Batch-1 latency of a .tflite with ai-edge-litert: warm-up, then the median and 90th
percentile per thread count, and which ops the XNNPACK delegate took (ops it left out run on
the plain CPU kernels and split the graph into partitions, the usual reason int8 is slow).

    python benchmark.py model_int8.tflite [--threads 1,2,4] [--runs 100] [--json OUT]
"""
import argparse
import json
import sys

import kitlib


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
        delegate = kitlib.delegate_report(args.model)
        timings = [kitlib.latency(args.model, t, args.runs, args.warmup) for t in threads]
    except ValueError:
        print(f"error: --threads wants integers like 1,2,4, got {args.threads!r}", file=sys.stderr)
        return 2
    except kitlib.KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    left = ", ".join(f"{op} x{n}" for op, n in delegate["not_delegated"].items()) or "none"
    print(f"{args.model}: XNNPACK took {delegate['delegated']} of {delegate['ops']} ops in "
          f"{delegate['partitions']} partition(s); left on plain CPU kernels: {left}")
    for t in timings:
        print(f"threads {t['threads']}: median {t['median_ms']:.3f} ms, p90 {t['p90_ms']:.3f} ms "
              f"({t['runs']} runs at batch 1)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"model": args.model, "delegate": delegate, "latency": timings}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
