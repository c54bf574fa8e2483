"""The measurements behind two int8 defaults, on fine-tuned runs (the table of float, int8,
int8 with a budget and QAT int8 is benchmarks/int8_table.py). Prints JSON lines. From the
repository root:

    python benchmarks/int8_budget.py RUN --calibration 50,100,300,1000,3000 --seeds 3
    python benchmarks/int8_budget.py RUN --qat-sweep 0.03,0.1,0.3,1 --qat-steps 800

--calibration: the post-training int8 drop and flip rate on the validation split against the
number of calibration images, several random draws each (the measurements behind
data/splits.py's "auto" calibration count). --qat-sweep: QAT at fractions of the
run's last peak learning rate, with the activation-range log (the measurements behind
qat.lr_fraction and qat.settle_steps).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from int8_table import machine  # noqa: E402  (benchmarks/ is the script's folder)


def calibration_sweep(run, counts, seeds):
    """The post-training int8 drop and flip rate on the validation split against the calibration
    count (several draws each)."""
    from kclassify.commands.export import ExportJob
    from kclassify.data.splits import calibration_images
    from kclassify.tflite.convert import convert
    from kclassify.kit import kitlib

    job = ExportJob(run)
    labels = np.asarray(job.val.labels)
    float_top = job.keras_probs.argmax(1)
    float_val = float((float_top == labels).mean())
    print(json.dumps({"run": str(run), "float_val": float_val, "val_images": len(job.val), "machine": machine()}),
          flush=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.tflite"
        for count in counts:
            for seed in range(seeds):
                t0 = time.time()
                calib = calibration_images(job.calib_split, count, seed, load=job.images)
                path.write_bytes(convert(job.model, "int8", calib))
                top = kitlib.Classifier(path).predict(job.val_images).argmax(1)
                print(json.dumps({"count": len(calib), "seed": seed,
                                  "drop_val_points": round((float_val - float((top == labels).mean())) * 100, 2),
                                  "flip_val_points": round(float((top != float_top).mean()) * 100, 2),
                                  "seconds": round(time.time() - t0, 1)}), flush=True)


def qat_sweep(run, fractions, steps):
    """QAT at fractions of the run's last peak rate: fake-quant and .tflite top-1, range settling."""
    from kclassify.commands.qat import last_peak_lr, qat
    from kclassify.run import Run

    peak = last_peak_lr(Run.load(run).recipe)
    for fraction in fractions:
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.time()
            rep = qat(run, steps=steps, lr=fraction * peak, keep="qat", out=Path(folder) / "q.tflite",
                      echo=lambda *a: None)
            both = rep["comparison"]
            print(json.dumps({"run": str(run), "lr_fraction": fraction, "lr": rep["lr"], "optimizer": rep["optimizer"],
                              "steps": rep["steps"], "qat_top1": both["qat"]["tflite"]["top1"],
                              "ptq_top1": both["post_training"]["tflite"]["top1"], "float_top1": both["float_top1"],
                              "fake_quant_top1_before": rep["worker"]["fake_quant_top1_before"],
                              "ranges_settled_at_step": rep["ranges_settled_at_step"],
                              "range_log": [(r["step"], round(r["max_rel_change"], 4), round(r["median_rel_change"], 5))
                                            for r in rep["worker"]["range_log"]],
                              "seconds": round(time.time() - t0, 1), "machine": machine()}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    sweep = ap.add_mutually_exclusive_group(required=True)
    sweep.add_argument("--calibration", help="comma-separated calibration counts: run the calibration sweep")
    sweep.add_argument("--qat-sweep", help="comma-separated fractions of the run's last peak learning rate")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--qat-steps", type=int, default=None, help="default: the recipe's (qat.settle_steps)")
    args = ap.parse_args()
    from kclassify import runtime

    runtime.quiet_tensorflow()
    for run in args.runs:
        if args.calibration:
            calibration_sweep(run, [int(c) for c in args.calibration.split(",")], args.seeds)
        else:
            qat_sweep(run, [float(f) for f in args.qat_sweep.split(",")], args.qat_steps)


if __name__ == "__main__":
    main()
