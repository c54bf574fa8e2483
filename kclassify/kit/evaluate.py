#!/usr/bin/env python3
"""Accuracy of a kclassify .tflite on an image folder (DIR/<class name>/<images>): top-1/top-5,
per-class precision/recall/F1 and the confusion matrix. Needs numpy, pillow, ai-edge-litert.

    python evaluate.py model_int8.tflite --images DIR [--json OUT] [--threads 2]
"""
import argparse
import json
import sys
import time

import kitlib


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the .tflite (its .json spec beside it, or embedded)")
    ap.add_argument("--images", required=True, help="folder with one sub-folder per class")
    ap.add_argument("--json", dest="json_out", help="write the full report here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        spec = kitlib.load_spec(args.model)
        images, labels, paths, skipped = kitlib.image_folder(args.images, spec)
        for line in skipped:
            print(f"skipped: {line}", file=sys.stderr)
        start = time.perf_counter()
        probs = kitlib.Classifier(args.model, num_threads=args.threads).predict(images)
        seconds = time.perf_counter() - start
    except kitlib.KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = kitlib.classification_report(probs, labels, spec["class_names"])
    report.update(model=args.model, images=args.images, skipped=len(skipped), seconds=seconds,
                  wrong=[{"path": p, "true": spec["class_names"][t], "predicted": spec["class_names"][q]}
                         for p, t, q in zip(paths, labels, probs.argmax(1)) if t != q])
    print(kitlib.format_report(report, title=f"{args.model} on {args.images}"))
    print(kitlib.format_confusion(report))
    print(f"{len(labels)} images in {seconds:.2f} s ({len(labels) / seconds:.0f} images/s, "
          f"{args.threads} threads, after decoding)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
