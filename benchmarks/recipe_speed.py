"""A recipe through `kclassify fit` itself, on whichever Keras backend is active: training seconds and
validation top-1 (plain and with the recipe's TTA) for one or more schedule lengths and seeds, the
training seconds to each accuracy (airbench's "time to 94%"), and whether the input keeps up with
the step: the run's own training stream timed alone against the run's training rate.

    KERAS_BACKEND=jax python benchmarks/recipe_speed.py cifar10_airbench94 --set data.path=... \
        [--epochs 8 10 12] [--seeds 3] [--stream-batches 50] [--out DIR]

Each run is `python -m kclassify fit RECIPE --set train.epochs=E --set runtime.seed=S` in a process
of its own; its figures are the run's metrics.json (train_seconds, train_images_per_s, train_gflops,
val, val_tta). The stream is the engine's (kclassify.train.backends.train_stream: tf.data, or the
numpy stream whose raw batches the step augments on JAX with runtime.augment_on device), read for
--stream-batches batches with nothing training; `input_to_train` is its rate over the runs' median
training rate: near 1 or below, the step waits for its data. Prints one JSON line per run, then
{"input": ...} and {"summary": ...}.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, nargs="+", default=None, help="schedule lengths (default: the recipe's)")
    p.add_argument("--seeds", type=int, default=1, help="runs per length, seeds runtime.seed + 0, 1, ...")
    p.add_argument("--stream-batches", type=int, default=50, help="batches of the training stream timed alone (0: none)")
    p.add_argument("--out", type=Path, default=None, help="folder for the run folders (default: a temporary one)")
    return p.parse_args(argv)


def fit(args, epochs, seed, out, batch_size):
    """One `kclassify fit` in its own process; the run's metrics.json figures. train_seconds_steady:
    its steps of a batch (train.batch_size, or every image where fewer) at the median epoch's rate, i.e. without the first epoch's compilation
    (airbench's timings leave it out too), where the run had more than one epoch."""
    sets = [*args.overrides, f"train.epochs={epochs}", f"runtime.seed={seed}"]
    cmd = [sys.executable, "-m", "kclassify", "fit", args.recipe, "--fresh", "--out", str(out)]
    proc = subprocess.run(cmd + [x for s in sets for x in ("--set", s)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"kclassify fit failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    rate = m.get("train_images_per_s")
    batch = min(batch_size, m["train_images"])
    return {"epochs": epochs, "seed": seed, "steps": m["steps"], "train_seconds": m["train_seconds"],
            "train_seconds_steady": round(m["steps"] * batch / rate, 2) if rate else None,
            "train_images_per_s": rate, "train_gflops": m.get("train_gflops"),
            "val_top1": m["val"]["top1"], "val_top1_tta": m.get("val_tta", m["val"])["top1"],
            "wall_seconds": m.get("wall_seconds")}


def stream_speed(args, batches):
    """Images a second of the engine's own training stream for the recipe, read alone."""
    import numpy as np

    from kclassify import runtime
    from kclassify.data import load_data
    from kclassify.data.batching import steps_per_epoch
    from kclassify.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    runtime.check_backend(recipe, runtime.keras_backend(), echo=lambda *a: None)
    strategy = runtime.setup(recipe.runtime, echo=lambda *a: None)
    from kclassify.train.backends import numpy_fed, train_stream  # after the backend's set-up

    data = load_data(recipe.data, recipe.runtime.seed, augment=recipe.augment)
    batch = min(recipe.train.batch_size, len(data.train))
    spe = steps_per_epoch(data.train, batch, recipe.train.steps_per_epoch)
    raw = runtime.augment_on_device(recipe.runtime.augment_on)
    stream = train_stream(recipe, data.train, len(data.class_names), strategy, batch, spe, 0, True, (0, 1), raw)
    for _ in range(3):  # warm up: tracing and the first prefetches
        np.asarray(next(stream)[0])
    start = time.perf_counter()
    for _ in range(batches):
        np.asarray(next(stream)[0])
    seconds = time.perf_counter() - start
    return {"backend": runtime.keras_backend(), "stream": "numpy" if numpy_fed(recipe) else "tf.data",
            "augmented_in": "step" if raw else "stream", "images_per_s": round(batches * batch / seconds, 1),
            "batches": batches, "batch": batch, "cpu_count": os.cpu_count()}


def summarize(runs, thresholds=(0.90, 0.91, 0.92, 0.93, 0.94)):
    """Mean figures per schedule length, and for each accuracy the steady training seconds of the
    shortest length whose mean TTA top-1 reaches it (None: none did)."""
    lengths = []
    for epochs in dict.fromkeys(r["epochs"] for r in runs):
        rs = [r for r in runs if r["epochs"] == epochs]
        lengths.append({"epochs": epochs, "runs": len(rs),
                        **{f"{k}_mean": round(statistics.fmean(r[k] or 0.0 for r in rs), 4)
                           for k in ("train_seconds", "train_seconds_steady", "val_top1", "val_top1_tta")}})
    reached = {f"{t:.2f}": min((row["train_seconds_steady_mean"] for row in lengths
                                if row["val_top1_tta_mean"] >= t), default=None) for t in thresholds}
    return {"lengths": lengths, "train_seconds_to_tta_top1": reached}


def main(argv=None):
    args = parse_args(argv)
    from kclassify.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    lengths, seed0 = args.epochs or [recipe.train.epochs], recipe.runtime.seed
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        runs = []
        for epochs in lengths:
            for i in range(args.seeds):
                runs.append(fit(args, epochs, seed0 + i, folder / f"e{epochs}_s{seed0 + i}", recipe.train.batch_size))
                print(json.dumps({"run": runs[-1]}), flush=True)
    if args.stream_batches:
        stream = stream_speed(args, args.stream_batches)
        rates = [r["train_images_per_s"] for r in runs if r["train_images_per_s"]]
        if rates:
            stream["input_to_train"] = round(stream["images_per_s"] / statistics.median(rates), 2)
        print(json.dumps({"input": stream}), flush=True)
    print(json.dumps({"summary": summarize(runs)}), flush=True)


if __name__ == "__main__":
    main()
