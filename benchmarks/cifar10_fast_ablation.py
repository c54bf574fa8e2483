"""Ablation of `recipes/cifar10_fast.yaml`: the whole recipe, then each technique off in turn (and
Muon on the conv filters added), one `kclassify fit` after another on the same machine. Test-time augmentation needs no run of its own:
the full recipe's plain validation figure is it.

    python benchmarks/cifar10_fast_ablation.py [--budget-minutes 30 | --epochs N] [--only NAME ...]

At a time budget (run nothing else beside it) a technique's speed cost counts against it; with
--epochs every variant trains the same number of steps, so the figures do not depend on what else
the machine was doing (only the wall times do).

Prints JSON: validation top-1 (with and without TTA), epochs trained and wall seconds per variant.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "full recipe": [],
    "no patch whitening (plain trainable 2x2 stem)": ["model.params.whiten=false", "train.whiten_bias_epochs="],
    "no identity (Dirac) init": ["model.init=default"],
    "no frozen BN scale / BN bias lr x64": ["train.bn_freeze_scale=false", "train.bn_bias_lr_mult=1"],
    "no lookahead": ["train.average="],
    "random flip instead of alternating": ["augment.flip=true"],
    "airbench94's augmentation (2-pixel translation, no Cutout)": ["augment.crop_pad=2", "augment.ops=[]"],
    # width against epochs at the same budget: airbench95's network (2.8x the MACs of airbench94, about 10 epochs
    # in 30 minutes), its augmentation and its rate (10 per 1,024 examples against 11.5)
    "airbench95's network, augmentation and rate (widths 128/384/384)": [
        "model.params.widths=[128,384,384]", "augment.crop_pad=2", "augment.ops=[]", "train.lr=0.652",
        "train.min_lr=0.0457"],
    # added rather than taken away: airbench94_muon's optimizer split (94% in 8 epochs on a GPU)
    "+ Muon on the conv filters (train.muon.lr 0.24)": ["train.optimizer=muon", "train.muon.lr=0.24"],
    "+ Muon on the conv filters (train.muon.lr 0.12)": ["train.optimizer=muon", "train.muon.lr=0.12"],
    # Muon paid at short lengths (+2 points at 4 epochs, nothing at 26): the wide network trains about 11
    "airbench95's network + Muon on the conv filters (train.muon.lr 0.12)": [
        "model.params.widths=[128,384,384]", "augment.crop_pad=2", "augment.ops=[]", "train.lr=0.652",
        "train.min_lr=0.0457", "train.optimizer=muon", "train.muon.lr=0.12"],
}


def run_variant(sets, length, out):
    args = [item for s in [*length, "output.export=[]", "output.report=false", "runtime.verbose=2", *sets]
            for item in ("--set", s)]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "kclassify", "fit", "cifar10_fast", "--fresh", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    m = json.loads((out / "metrics.json").read_text())
    return {"val_top1": round(m["val"]["top1"], 4), "val_top1_tta": round(m.get("val_tta", m["val"])["top1"], 4),
            "epochs": round(m["steps"] / (45000 // 512), 2), "wall_seconds": round(time.time() - t0, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-minutes", type=float, default=30)
    parser.add_argument("--epochs", type=int, help="a fixed length instead of the budget")
    parser.add_argument("--only", nargs="*", help="variant names (default: all)")
    parser.add_argument("--out", default="/tmp/kc-fast-ablation")
    args = parser.parse_args()
    length = ([f"train.epochs={args.epochs}", "train.budget_minutes="] if args.epochs
              else [f"train.budget_minutes={args.budget_minutes}"])
    results = {}
    for i, (name, sets) in enumerate(VARIANTS.items()):
        if args.only and name not in args.only:
            continue
        results[name] = run_variant(sets, length, Path(args.out) / str(i))
        print(name, results[name], file=sys.stderr, flush=True)
    print(json.dumps({"recipe": "cifar10_fast", **({"epochs": args.epochs} if args.epochs else
                                                    {"budget_minutes": args.budget_minutes}),
                      "data": "CIFAR-10 JPEGs, 45,000 train / 5,000 val", "results": results}, indent=1))


if __name__ == "__main__":
    main()
