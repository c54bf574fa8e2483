#!/usr/bin/env python3
"""Top-k classes of one or more images with a kclassify .tflite (class names from its spec).

    python predict.py model_int8.tflite photo.jpg [more.jpg ...] [-k 5]
"""
import argparse
import sys

import numpy as np

import kitlib


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("images", nargs="+")
    ap.add_argument("-k", "--top", type=int, default=5)
    args = ap.parse_args(argv)
    status = 0
    try:
        spec = kitlib.load_spec(args.model)
        model = kitlib.Classifier(args.model)
    except kitlib.KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = spec["class_names"]
    for path in args.images:
        try:
            pixels = kitlib.load_image(path, spec)
        except kitlib.KitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        probs = model.predict(pixels[None])[0]
        best = np.argsort(-probs)[: min(args.top, len(names))]
        print(f"{path}: " + ", ".join(f"{names[i]} {probs[i]:.3f}" for i in best))
    return status


if __name__ == "__main__":
    sys.exit(main())
