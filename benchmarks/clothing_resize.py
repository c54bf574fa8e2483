"""Resize policy and crop augmentation for fine-tuning, on the real clothing photos (../shared):
recipes/clothing_mobilenet.yaml (pretrained MobileNet alpha 0.25 at 128x128, staged unfreezing)
trained two ways with the same phases, epochs and seed, validation top-1 of each, as JSON:

- "crop + random_resized_crop": data.resize crop (shorter side, then the center, for validation)
  and augment.random_resized_crop (Inception/timm ranges, cut from the stored resolution: the
  training images are packed once into the cache at up to 256 px and streamed);
- "squash + pad-crop": data.resize squash (aspect lost, as before issue 12) and the recipe's
  pad-crop 8 (reflect), the images held in memory at 128x128.

Both keep the recipe's horizontal flip. --extra-arms adds "crop + random_resized_crop scale
[0.35, 1]" (a milder crop) and "crop + pad-crop" (the resize policy alone). Run from the
repository root:

    python benchmarks/clothing_resize.py [--seeds 0 1] [--extra-arms] [--out /tmp/kc-resize] [--set KEY=VALUE ...]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from data_stream import _cpu  # the CPU model and flags, as the data benchmark reports them

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "crop + random_resized_crop": ["data.resize=crop", "augment.random_resized_crop=true", "augment.crop_pad=0"],
    "squash + pad-crop": ["data.resize=squash", "augment.random_resized_crop=false", "augment.crop_pad=8"],
}
EXTRA = {  # --extra-arms: which half of the change matters
    "crop + random_resized_crop scale [0.35, 1]": ["data.resize=crop", "augment.random_resized_crop={scale: [0.35, 1.0]}",
                                                    "augment.crop_pad=0"],
    "crop + pad-crop": ["data.resize=crop", "augment.random_resized_crop=false", "augment.crop_pad=8"],
}
QUIET = ["output.export=[]", "output.report=false", "output.plots=false", "output.tensorboard=false"]


def run_arm(sets, run, env):
    """Figures of one finetune run; a random_resized_crop arm must have packed its training images
    into the cache (that is how it crops from the stored resolution), else it did not crop."""
    cmd = [sys.executable, "-m", "kclassify", "finetune", "clothing_mobilenet", "--out", str(run), "--fresh"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = round(time.time() - t0, 1)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-3:], "wall_seconds": wall}
    crops = any(s.startswith("augment.random_resized_crop=") and not s.endswith("=false") for s in sets)
    if crops and not list((Path(env["KCLASSIFY_CACHE"]) / "packed").glob("train-*")):
        return {"error": "random_resized_crop was not applied (no pack in the cache): load_data did not get the "
                         "recipe's augment section", "wall_seconds": wall}
    m = json.loads((run / "metrics.json").read_text())
    return {"val_top1": round(m["val"]["top1"], 4), "val_top5": round(m["val"]["top5"], 4), "epochs": m["epochs"],
            "train_seconds": m["train_seconds"], "wall_seconds": wall}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="/tmp/kc-resize")
    parser.add_argument("--extra-arms", action="store_true", help="Also " + " and ".join(EXTRA) + ".")
    parser.add_argument("--only-extra", action="store_true", help="Only the extra arms.")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="Applied to both arms alike (e.g. a shorter schedule).")
    args = parser.parse_args()
    env = {**os.environ, "KCLASSIFY_CACHE": str(Path(args.out) / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    results = {}
    arms = {} if args.only_extra else dict(ARMS)
    arms.update(EXTRA if args.extra_arms or args.only_extra else {})
    for seed in args.seeds:
        for name, sets in arms.items():
            run = Path(args.out) / "runs" / f"{re.sub(r'[^A-Za-z0-9.]+', '_', name)}-seed{seed}"
            results.setdefault(name, {})[f"seed {seed}"] = run_arm([*sets, *QUIET, f"runtime.seed={seed}", *args.extra],
                                                                    run, env)
    for name, by_seed in results.items():
        tops = [r["val_top1"] for r in by_seed.values() if "val_top1" in r]
        if tops:
            by_seed["mean val_top1"] = round(sum(tops) / len(tops), 4)
    print(json.dumps({"recipe": "clothing_mobilenet", "data": "clothing-small-trainval (3,068 train / 341 validation)",
                      "extra_sets": args.extra, "cpu": _cpu(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
