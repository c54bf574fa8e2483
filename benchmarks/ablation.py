"""Training-catalogue ablation on real CIFAR-10 (../shared) at a small CPU budget: the same
network, data and epochs with one technique added at a time. Prints JSON (validation top-1 and
wall seconds per variant). Run from the repository root:

    python benchmarks/ablation.py [--epochs 4] [--train-images 20000] [--width 16]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "baseline (crop+flip)": [],
    "+cutout 16": ["augment.ops=[{name: cutout, length: 16}]"],
    "+cutmix 1.0": ["augment.cutmix_alpha=1.0"],
    "+autoaugment cifar10": ["augment.ops=[{name: autoaugment, policy: cifar10}]"],
    "+label smoothing 0.1": ["train.label_smoothing=0.1"],
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--out", default="/tmp/kc-ablation")
    args = parser.parse_args()
    base = [f"train.epochs={args.epochs}", f"data.limit={args.train_images}", f"model.params.width={args.width}",
            "train.label_smoothing=0.0", "output.export=[]", "output.tensorboard=false", "runtime.verbose=2"]
    results = {}
    for name, extra in VARIANTS.items():
        run = Path(args.out) / str(len(results))
        sets = [item for pair in (("--set", s) for s in base + extra) for item in pair]
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "kclassify", "fit", "cifar10_cpu", "--fresh", "--out", str(run),
                               *sets], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        metrics = json.loads((run / "metrics.json").read_text())
        results[name] = {"val_top1": round(metrics["val"]["top1"], 4), "wall_seconds": round(time.time() - t0, 1)}
        print(name, results[name], file=sys.stderr, flush=True)
    print(json.dumps({"data": f"CIFAR-10 JPEGs, {args.train_images} training images, 5,000 validation",
                      "model": f"resnet9 width {args.width}", "epochs": args.epochs, "results": results}, indent=1))


if __name__ == "__main__":
    main()
