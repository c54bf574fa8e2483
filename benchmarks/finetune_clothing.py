"""Fine-tuning ablation on the real clothing photos (../shared): the same MobileNet (alpha 0.25,
128x128) and the same epoch budget, trained four ways. Prints JSON: validation top-1 and wall
seconds of each, and the int8 export of the staged run. Run from the repository root:

    python benchmarks/finetune_clothing.py [--epochs 10] [--out /tmp/kc-ft] [--only NAME ...] [--set KEY=VALUE ...]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def variants(epochs):
    head = max(epochs * 3 // 10, 1)
    top = max(epochs * 3 // 10, 1)
    return {
        "staged (pretrained)": ["--unfreeze-schedule", f"head:{head},top4:{top},all:{epochs - head - top}"],
        "head only (pretrained)": ["--unfreeze-schedule", f"head:{epochs}"],
        "random init, all layers": ["--unfreeze-schedule", f"all:{epochs}@1e-3", "--set", "model.params.weights=null",
                                    "--set", "finetune.train_bn=true"],
        "linear probe (pretrained)": ["--set", "finetune.mode=linear_probe"],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="/tmp/kc-ft")
    parser.add_argument("--only", nargs="+", help="variant names (default: all)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="a recipe field for every variant, under the variant's own (e.g. data.path=...)")
    args = parser.parse_args()
    results = {}
    sets = [item for s in args.overrides for item in ("--set", s)]
    for name, extra in variants(args.epochs).items():
        if args.only and name not in args.only:
            continue
        run = Path(args.out) / name.split()[0]
        export = [] if name.startswith("staged") else ["--set", "output.export=[]"]
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "kclassify", "finetune", "clothing_mobilenet", "--out", str(run),
                               "--fresh", *sets, *extra, *export], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        metrics = json.loads((run / "metrics.json").read_text())
        results[name] = {"val_top1": round(metrics["val"]["top1"], 4), "wall_seconds": round(time.time() - t0, 1)}
        int8 = run / "model_int8.json"
        if int8.exists():
            rep = json.loads(int8.read_text())
            results[name]["int8"] = {"top1": round(rep["tflite"]["top1"], 4), "keras_top1": round(rep["keras"]["top1"], 4),
                                     "agreement": round(rep["agreement"], 4), "size_bytes": rep["size_bytes"]}
    print(json.dumps({"data": "clothing-small-trainval (341 validation images)", "epochs": args.epochs,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
