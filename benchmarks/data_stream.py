"""Streamed against in-memory data on the shared CIFAR-10 folder: peak RSS and images/s, as JSON.

    python benchmarks/data_stream.py                  # `kclassify fit`: in memory and streamed at 32x32
                                                      # (all 50,000), at 224 on a per-class subset (in
                                                      # memory would be 7.5 GB), and streamed at 224 on
                                                      # all 50,000 with data.cache_gb 1
    python benchmarks/data_stream.py --stream-only    # the data alone: one full epoch of examples()
    python benchmarks/data_stream.py --flat           # peak RSS of the README's 224-pixel case (cifar10_cpu,
                                                      # cache_gb 1, batch 16, 10 steps, then the final
                                                      # evaluation) on 10,000 and on 50,000 images: the
                                                      # ratio is what "flat" means; and the case as given
                                                      # (5,000 validation images held decoded)

Every configuration runs in a process of its own; its peak RSS is that process's (wait4's
ru_maxrss: decoding or packing included), its images/s the training images of its last epoch over
that epoch's training seconds (history.csv; validation runs only after the last epoch, outside
them). The 32x32 pair, whose ratio the project bounds, runs --rounds times alternated, so a load
that drifts during the run weighs on both arms alike. "model alone" rows: the peak RSS of the
same network trained on random tensors (plain keras fit), what no data layer can go below.
Packing into the cache happens in the first streamed configuration of each size and folder (its
wall_seconds include it). Run from the repository root; the packs go to --out/cache
(KCLASSIFY_CACHE), so a second run reuses them.
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10-train-png.tar.gz"

# name: (folder: "all" or "subset", image size, data.cache_gb, batch size, steps per epoch, validation images).
# At 224 the batch is 16, and validation batches are the training batch: ResNet-9's own activations at
# 224x224 take about 2.7 GB at batch 16 (the "model alone" rows), 4.5 GB at 32, and a few GB more at the
# default evaluate.batch_size of 256.
PAIR_32 = {"32 in memory": ("all", 32, 4.0, 128, 40, 1000), "32 streamed": ("all", 32, 0.0, 128, 40, 1000)}
FITS_224 = {"224 in memory (subset)": ("subset", 224, 4.0, 16, 8, 200),
            "224 streamed (subset)": ("subset", 224, 0.0, 16, 8, 200),
            "224 streamed, cache_gb 1 (all)": ("all", 224, 1.0, 16, 8, 200)}
IN_MEMORY_224 = {"224 in memory (all)": ("all", 224, 100.0, 16, 8, 200)}  # ~15 GB: only with --with-224-in-memory
MODEL_ALONE = {"model alone at 32, batch 128": (32, 128), "model alone at 224, batch 16": (224, 16)}


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


def subset_folder(archive, out, per_class):
    """The first `per_class` images of each class of the archive's train/ tree, extracted once."""
    root = Path(out) / f"subset-{per_class}"
    if not (root / ".done").exists():
        taken = {}
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 3 and parts[0] == "train":
                    if taken.get(parts[1], 0) < per_class:
                        tar.extract(member, root, filter="data")
                        taken[parts[1]] = taken.get(parts[1], 0) + 1
        (root / ".done").touch()
    return root


def fit_command(name, folder, size, cache_gb, batch, steps, val_count, args):
    run = Path(args.out) / "runs" / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    sets = {"data.source": "image_folder", "data.path": str(folder), "data.subdir": "train",
            "data.val_count": val_count, "data.image_size": size, "data.cache_gb": cache_gb,
            "model.name": "resnet9", "model.params": "{width: 32}", "augment.crop_pad": 4, "augment.flip": "true",
            "train.epochs": args.epochs, "train.batch_size": batch, "train.steps_per_epoch": steps,
            "train.val_every": 0, "evaluate.batch_size": batch, "train.lr": 0.05, "output.export": "[]", "output.plots": "false",
            "output.tensorboard": "false", "output.report": "false"}
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
data = load_data(DataConfig(source="image_folder", path=sys.argv[5], subdir="train", val_count=int(sys.argv[6]),
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


MODEL_CHILD = """
import sys
import keras, tensorflow as tf
from kclassify.models import build_model
size, batch, steps = map(int, sys.argv[1:4])
model = build_model("resnet9", 10, (size, size, 3), width=32)
model.compile(optimizer=keras.optimizers.SGD(0.05), loss="categorical_crossentropy")
x, y = tf.random.uniform([batch, size, size, 3], 0, 255), tf.one_hot(tf.zeros([batch], tf.int32), 10)
model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(steps), verbose=0)
"""


# The first two rows differ only in the folder's size (--flat-small images a class, then the whole
# folder; --val-count validation images each, default 1,000), so their ratio shows what the dataset's
# size costs; the third is the case as the README gives it (5x the validation images: the recipe's
# 5,000, 0.75 GB decoded at 224, which fit in cache_gb 1 and are held).
FLAT_SETS = {"data.cache_gb": 1, "train.epochs": 1, "train.steps_per_epoch": 10, "train.batch_size": 16,
             "output.export": "[]"}


def flat_all(args, env):
    """`kclassify fit recipes/cifar10_cpu.yaml` with FLAT_SETS at --flat-size pixels on a small
    folder and on the whole one, each in a process of its own; then the ratio of their peaks."""
    val = args.val_count or 1000
    rows = {"small folder": (args.flat_small, val), "whole folder": (0, val), "whole folder, 5x validation": (0, 5 * val)}
    results = {}
    for i, (name, (per_class, count)) in enumerate(rows.items()):
        folder = subset_folder(args.data, args.out, per_class) if per_class else args.data
        sets = {**FLAT_SETS, "data.image_size": args.flat_size, "data.path": folder, "data.val_count": count}
        cmd = [sys.executable, "-m", "kclassify", "fit", str(ROOT / "recipes" / "cifar10_cpu.yaml"), "--fresh",
               "--out", str(Path(args.out) / "runs" / f"flat-{i}")]
        for key, value in sets.items():
            cmd += ["--set", f"{key}={value}"]
        code, rss, wall, out, err = run_child(cmd, env, Path(args.out) / "logs" / f"flat-{i}")
        images = int(re.search(r"data: (\d+) train / (\d+) val", out).group(1)) if code == 0 else None
        results[name] = ({"train_images": images, "val_images": count, "peak_rss_mb": round(rss),
                          "wall_seconds": round(wall, 1)} if code == 0
                         else {"error": err.strip().splitlines()[-3:], "peak_rss_mb": round(rss)})
    small, large = results["small folder"].get("train_images"), results["whole folder"].get("train_images")
    if small and large:
        results["peak RSS whole / small folder"] = round(results["whole folder"]["peak_rss_mb"]
                                                         / results["small folder"]["peak_rss_mb"], 3)
        results["images whole / small folder"] = round(large / small, 2)
    return results


def fit_all(args, env):
    """Every fit configuration (the 32 pair alternated --rounds times), then the model-alone rows."""
    subset = subset_folder(args.data, args.out, args.subset)
    results, order = {}, [*PAIR_32] * args.rounds + [*FITS_224] + ([*IN_MEMORY_224] if args.with_224_in_memory else [])
    order = [name for name in order if chosen(name, args)]
    configs = {**PAIR_32, **FITS_224, **IN_MEMORY_224}
    for i, name in enumerate(order):
        which, size, cache_gb, batch, steps, val = configs[name]
        steps, val = args.steps or steps, args.val_count or val
        cmd, run = fit_command(name, subset if which == "subset" else args.data, size, cache_gb, batch, steps, val, args)
        code, rss, wall, out, err = run_child(cmd, env, Path(args.out) / "logs" / f"{run.name}-{i}")
        row = ({**fit_figures(run, batch, steps), "peak_rss_mb": round(rss), "wall_seconds": round(wall, 1)}
               if code == 0 else {"error": err.strip().splitlines()[-3:], "peak_rss_mb": round(rss)})
        results.setdefault(name, []).append(row)
    for name, rows in results.items():  # one round: its row; more: the first row, images/s and RSS of each
        first = dict(rows[0])
        if len(rows) > 1 and all("images_per_s" in r for r in rows):
            first.update(images_per_s_rounds=[r["images_per_s"] for r in rows],
                         images_per_s=round(sum(r["images_per_s"] for r in rows) / len(rows), 1),
                         peak_rss_mb_rounds=[r["peak_rss_mb"] for r in rows])
        results[name] = first
    for size, a, b in ((32, "32 in memory", "32 streamed"), (224, "224 in memory (subset)", "224 streamed (subset)")):
        a, b = results.get(a, {}), results.get(b, {})
        if "images_per_s" in a and "images_per_s" in b:
            results[f"streamed / in memory images/s at {size}"] = round(b["images_per_s"] / a["images_per_s"], 3)
    for name, (size, batch) in MODEL_ALONE.items():  # what the network's training alone holds (plain keras fit)
        if not chosen(name, args):
            continue
        cmd = [sys.executable, "-c", MODEL_CHILD, str(size), str(batch), "4"]
        code, rss, wall, out, err = run_child(cmd, env, Path(args.out) / "logs" / f"model-{size}")
        results[name] = {"peak_rss_mb": round(rss)} if code == 0 else {"error": err.strip().splitlines()[-3:]}
    return results


def chosen(name, args):
    return not args.only or name in args.only


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default="/tmp/kc-stream")
    parser.add_argument("--epochs", type=int, default=2, help="Fit epochs; the last one is timed.")
    parser.add_argument("--steps", type=int, help="Steps per fit epoch for every configuration (default: 40 at 32, 8 at 224).")
    parser.add_argument("--rounds", type=int, default=2, help="Times the 32x32 pair runs, alternated (load drifts).")
    parser.add_argument("--subset", type=int, default=500, help="Images per class of the 224 in-memory/streamed pair.")
    parser.add_argument("--stream-only", action="store_true", help="Time one epoch of examples() only, no training.")
    parser.add_argument("--batches", type=int, default=0, help="--stream-only: stop after N batches (0: the whole epoch).")
    parser.add_argument("--flat", action="store_true", help="Peak RSS of the 224-pixel case at two dataset sizes.")
    parser.add_argument("--flat-size", type=int, default=224, help="--flat: the image size.")
    parser.add_argument("--flat-small", type=int, default=1000, help="--flat: images a class of the small folder.")
    parser.add_argument("--with-224-in-memory", action="store_true", help="Also fit in memory at 224 (needs ~16 GB).")
    parser.add_argument("--only", nargs="+", help="Configuration and model-alone row names to run (default: all).")
    parser.add_argument("--val-count", type=int, help="Validation images of every configuration (default: 1000 at 32, "
                                                      "200 at 224, 5000 with --stream-only).")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"needs {args.data} (the project's shared lossless CIFAR-10)")
    env = {**os.environ, "KCLASSIFY_CACHE": str(Path(args.out) / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    results = {}
    if args.stream_only:
        for name, (size, cache_gb, batch) in {"32 in memory": (32, 4.0, 128), "32 streamed": (32, 0.0, 128),
                                              "224 streamed, cache_gb 1": (224, 1.0, 128)}.items():
            if not chosen(name, args):
                continue
            cmd = [sys.executable, "-c", STREAM_CHILD, str(size), str(cache_gb), str(batch), str(args.batches), args.data,
                   str(args.val_count or 5000)]
            code, rss, wall, out, err = run_child(cmd, env, Path(args.out) / "logs" / f"stream-{size}-{cache_gb}")
            results[name] = ({**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": round(rss), "wall_seconds": round(wall, 1)}
                             if code == 0 else {"error": err.strip().splitlines()[-3:]})
    elif args.flat:
        results = flat_all(args, env)
    else:
        results = fit_all(args, env)
    subset = args.flat_small if args.flat else args.subset
    print(json.dumps({"data": f"{args.data} (CIFAR-10's 50,000 training images, PNG; 'all': minus the validation "
                              f"images; 'subset' / 'small folder': the first {subset} of each class)",
                      "cpu": _cpu(), "mode": "stream-only" if args.stream_only else "flat" if args.flat else "fit",
                      "results": results}, indent=1))


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
