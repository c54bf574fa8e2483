"""Ablation of `recipes/cifar10_fast.yaml`: the whole recipe, then each technique off in turn (and
the recipe before it), one `kclassify fit` after another on the same machine. Test-time augmentation needs no run of its own:
the full recipe's plain validation figure is it.

    python benchmarks/cifar10_fast_ablation.py [--budget-minutes 30 | --epochs N] [--only NAME ...] [--set KEY=VALUE ...]

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
# Arms on the recipe as it is (airbench95's network, Muon on the filters). The README has two tables at 30
# minutes: these arms, and the same arms measured earlier on the recipe before (airbench94, SGD, 4-pixel
# translation + Cutout 12: BEFORE rebuilds it).
BEFORE = ["model.name=airbench94", "augment.crop_pad=4", "augment.ops=[{name: cutout, length: 12}]",
          "train.optimizer=sgd", "train.lr=0.75", "train.min_lr=0.0525"]
# airbench96_faster's data filtering: draw 1,024, train on the proxy's hardest 512 (the same step count and rate)
FILTER = ["train.batch_size=1024", "train.data_filter={keep: 0.5}"]
VARIANTS = {
    "full recipe": [],
    "no patch whitening (plain trainable 2x2 stem)": ["model.params.whiten=false", "train.whiten_bias_epochs="],
    "no identity (Dirac) init": ["model.init=default"],
    "no frozen BN scale / BN bias lr x64": ["train.bn_freeze_scale=false", "train.bn_bias_lr_mult=1"],
    "no lookahead": ["train.average="],
    "random flip instead of alternating": ["augment.flip=true"],
    "SGD instead of Muon on the conv filters": ["train.optimizer=sgd"],
    "Muon at airbench94_muon's rate (train.muon.lr 0.24)": ["train.muon.lr=0.24"],
    # width against epochs: the recipe before, airbench94 (2.6x cheaper a step, 22-29 epochs in 30 minutes)
    "the recipe before: airbench94, SGD, 4-pixel translation + Cutout 12": BEFORE,
    "the recipe before + Muon (train.muon.lr 0.12)": [*BEFORE, "train.optimizer=muon"],
    "data filter (train on the proxy's hardest 512 of every 1,024)": FILTER,
    "the recipe before + data filter": [*BEFORE, *FILTER],
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
            "epochs": round(m["steps"] * trained_batch(out) / m["train_images"], 2),
            "wall_seconds": round(time.time() - t0, 1)}


def trained_batch(out):
    """Images the model trained on per step (the kept share of the drawn batch with train.data_filter), so an
    arm's epochs count the model's own passes over the training images."""
    from kclassify.recipe import load_recipe

    return load_recipe(str(out / "recipe.yaml")).train.trained_batch()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-minutes", type=float, default=30)
    parser.add_argument("--epochs", type=int, help="a fixed length instead of the budget")
    parser.add_argument("--only", nargs="*", help="variant names (default: all)")
    parser.add_argument("--out", default="/tmp/kc-fast-ablation")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="a recipe field for every variant, under the variant's own (e.g. data.path=...)")
    args = parser.parse_args()
    length = ([f"train.epochs={args.epochs}", "train.budget_minutes="] if args.epochs
              else [f"train.budget_minutes={args.budget_minutes}"])
    results = {}
    for i, (name, sets) in enumerate(VARIANTS.items()):
        if args.only and name not in args.only:
            continue
        results[name] = run_variant([*args.overrides, *sets], length, Path(args.out) / str(i))
        print(name, results[name], file=sys.stderr, flush=True)
    print(json.dumps({"recipe": "cifar10_fast", **({"epochs": args.epochs} if args.epochs else
                                                    {"budget_minutes": args.budget_minutes}),
                      "data": ", ".join(o for o in args.overrides if o.startswith("data."))
                      or "the recipe's: lossless CIFAR-10, 45,000 train / 5,000 val", "results": results}, indent=1))


if __name__ == "__main__":
    main()
