"""Streamed against in-memory data on the shared CIFAR-10 folder: peak RSS and images/s, as JSON.

    python benchmarks/data_stream.py                  # `kclassify fit`: in memory and streamed at 32x32,
                                                      # streamed at 224 with data.cache_gb 1
    python benchmarks/data_stream.py --stream-only    # the data alone: one full epoch of examples()

Every configuration runs in a process of its own; its peak RSS is that process's (wait4's
ru_maxrss), its images/s the training images of its last epoch over that epoch's seconds
(history.csv; the --val-count validation images evaluated at the epoch's end are inside those
seconds, the same for both arms at one size). Packing into the cache happens in the first
streamed configuration and is timed apart (load_seconds of --stream-only). Run from the
repository root; the packs go to --out/cache (KCLASSIFY_CACHE), so a second run reuses them.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10-train.tar.gz"

# name: (image size, data.cache_gb, batch size, steps per epoch)
FITS = {"32 in memory": (32, 4.0, 128, 150), "32 streamed": (32, 0.0, 128, 150),
        "224 streamed, cache_gb 1": (224, 1.0, 32, 40)}
IN_MEMORY_224 = {"224 in memory": (224, 100.0, 32, 40)}  # about 15 GB: only with --with-224-in-memory


def run_child(cmd, env, log):
    """(exit code, peak RSS in MB, wall seconds, stdout, stderr) of one child process; its output
    goes to log.out / log.err."""
    t0 = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not all children's
    return (os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, time.time() - t0,
            Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text())


def fit_command(name, size, cache_gb, batch, steps, args):
    run = Path(args.out) / "runs" / name.replace(" ", "_").replace(",", "")
    sets = {"data.source": "image_folder", "data.path": str(args.data), "data.subdir": "train",
            "data.val_count": args.val_count, "data.image_size": size, "data.cache_gb": cache_gb,
            "model.name": "resnet9", "model.params": "{width: 32}", "augment.crop_pad": 4, "augment.flip": "true",
            "train.epochs": args.epochs, "train.batch_size": batch, "train.steps_per_epoch": steps,
            "train.lr": 0.05, "output.export": "[]", "output.plots": "false", "output.tensorboard": "false",
            "output.report": "false"}
    cmd = [sys.executable, "-m", "kclassify", "fit", "quickstart", "--out", str(run), "--fresh"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd, run


def fit_figures(run, batch, steps):
    rows = list(csv.DictReader(open(run / "history.csv")))
    seconds = float(rows[-1]["seconds"])
    val = {k: round(float(v), 4) for k, v in rows[-1].items() if k.startswith("val_") and v}
    return {"epochs": len(rows), "last_epoch_seconds": seconds, "images_per_s": round(steps * batch / seconds, 1), **val}


STREAM_CHILD = """
import json, resource, sys, time
import numpy as np
from kclassify.data import load_data
from kclassify.recipe import DataConfig
size, cache_gb, batch, limit = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0 = time.time()
data = load_data(DataConfig(source="image_folder", path=sys.argv[5], subdir="train", val_count=5000,
                            image_size=size, cache_gb=cache_gb))
loaded = time.time() - t0
import tensorflow as tf
ds = data.train.examples(seed=0, epoch=0, training=True).batch(batch).prefetch(tf.data.AUTOTUNE)
if limit:
    ds = ds.take(limit)
it = iter(ds)
next(it)  # the first batch fills the pipeline (and the shuffle buffer): timed apart
t1 = time.time()
seen = 0
for x, y in it:
    seen += int(x.shape[0])
spent = time.time() - t1
print(json.dumps({"train": type(data.train).__name__, "val": type(data.val).__name__, "load_seconds": round(loaded, 1),
                  "images": seen, "seconds": round(spent, 1), "images_per_s": round(seen / spent, 1),
                  "peak_rss_mb_inside": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default="/tmp/kc-stream")
    parser.add_argument("--epochs", type=int, default=2, help="Fit epochs; the last one is timed.")
    parser.add_argument("--val-count", type=int, default=1000)
    parser.add_argument("--steps", type=int, help="Steps per fit epoch for every configuration (default: 150 at 32, 40 at 224).")
    parser.add_argument("--stream-only", action="store_true", help="Time one epoch of examples() only, no training.")
    parser.add_argument("--batches", type=int, default=0, help="--stream-only: stop after N batches (0: the whole epoch).")
    parser.add_argument("--with-224-in-memory", action="store_true", help="Also fit in memory at 224 (needs ~16 GB).")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"needs {args.data} (the project's shared CIFAR-10 JPEGs)")
    env = {**os.environ, "KCLASSIFY_CACHE": str(Path(args.out) / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    results = {}
    if args.stream_only:
        for name, (size, cache_gb, batch) in {"32 in memory": (32, 4.0, 128), "32 streamed": (32, 0.0, 128),
                                              "224 streamed, cache_gb 1": (224, 1.0, 128)}.items():
            cmd = [sys.executable, "-c", STREAM_CHILD, str(size), str(cache_gb), str(batch), str(args.batches), args.data]
            code, rss, wall, out, err = run_child(cmd, env, Path(args.out) / "logs" / f"stream-{size}-{cache_gb}")
            results[name] = ({**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": round(rss), "wall_seconds": round(wall, 1)}
                             if code == 0 else {"error": err.strip().splitlines()[-3:]})
    else:
        for name, (size, cache_gb, batch, steps) in {**FITS, **(IN_MEMORY_224 if args.with_224_in_memory else {})}.items():
            steps = args.steps or steps
            cmd, run = fit_command(name, size, cache_gb, batch, steps, args)
            code, rss, wall, out, err = run_child(cmd, env, Path(args.out) / "logs" / run.name)
            results[name] = ({**fit_figures(run, batch, steps), "peak_rss_mb": round(rss), "wall_seconds": round(wall, 1)}
                             if code == 0 else {"error": err.strip().splitlines()[-3:], "peak_rss_mb": round(rss)})
        a, b = results.get("32 in memory", {}), results.get("32 streamed", {})
        if "images_per_s" in a and "images_per_s" in b:
            results["streamed / in memory at 32"] = round(b["images_per_s"] / a["images_per_s"], 3)
    print(json.dumps({"data": f"{args.data} (45,000 train / 5,000 val of CIFAR-10's training JPEGs)",
                      "cpu": _cpu(), "mode": "stream-only" if args.stream_only else "fit", "results": results}, indent=1))


def _cpu():
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        return f"{os.cpu_count()} x {model}; " + " ".join(f for f in ("avx2", "avx512f", "amx_bf16") if f in flags)
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
