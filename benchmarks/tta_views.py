"""Which test-time augmentation views pay on a finished run: validation top-1 of the run's model under
each view set, on the run's own validation split.

    python benchmarks/tta_views.py RUN [--max-shift 2]

Each distinct view (a shift of the reflect-padded image, mirrored or not) goes through the network once,
so the sets below (kclassify's presets at shifts 1 and 2, and larger grids) cost one pass per view in
all, not per set; a set's figure is the weighted mean of its views' log-probabilities (evaluate.average
"logits", what kclassify.tta.TTAAverage computes). The views are cut by kclassify.tta.TTAViews, the
layer the presets use. Prints one JSON line per set, then the seconds the passes took.
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run folder (recipe.yaml, model.keras)")
    p.add_argument("--max-shift", type=int, default=2, choices=[1, 2, 3, 4], help="largest shift tried")
    p.add_argument("--batch", type=int, default=500)
    return p.parse_args(argv)


def view_sets(max_shift):
    """{name: [(dy, dx, flip, weight)]}: the presets at each shift, and grids of shifts x mirror."""
    from kclassify.tta import preset_views

    sets = {"none": preset_views("none"), "flip": preset_views("flip")}
    for s in range(1, max_shift + 1):
        sets[f"mirror_translate shift {s}"] = preset_views("mirror_translate", s)
        sets[f"crops shift {s}"] = preset_views("crops", s)
    grid = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    sets["3x3 shifts x mirror, equal weights"] = [(dy, dx, f, 1 / 18) for dy, dx in grid for f in (False, True)]
    sets["3x3 shifts x mirror, centre 1/4 each side"] = [(0, 0, f, 0.25) for f in (False, True)] + [
        (dy, dx, f, 0.5 / 16) for dy, dx in grid if (dy, dx) != (0, 0) for f in (False, True)]
    sets["mirror_translate shift 1 + both diagonals"] = [(0, 0, f, 0.25) for f in (False, True)] + [
        (d, e * d, f, 0.0625) for d in (-1, 1) for e in (-1, 1) for f in (False, True)]
    return sets


def view_log_probs(model, images, views, batch):
    """{(dy, dx, flip): log-probabilities of every image under that view}."""
    import numpy as np

    from kclassify.tta import EPS, TTAViews

    out = {}
    for view in views:
        cut = TTAViews([view])
        probs = np.concatenate([model.predict(np.asarray(cut(images[i:i + batch].astype("float32"))),
                                              batch_size=batch, verbose=0)
                                for i in range(0, len(images), batch)])
        out[view] = np.log(np.clip(probs, EPS, 1.0))
    return out


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np

    import kclassify  # noqa: F401  (registers the layers a saved model holds)
    from kclassify.data import load_data
    from kclassify.recipe import load_recipe

    recipe = load_recipe(str(args.run / "recipe.yaml"))
    data = load_data(recipe.data, recipe.runtime.seed, augment=recipe.augment)
    model = keras.models.load_model(args.run / "model.keras")
    sets = view_sets(args.max_shift)
    views = sorted({v[:3] for views in sets.values() for v in views})
    started = time.time()
    logp = view_log_probs(model, data.val.images, views, args.batch)
    seconds = time.time() - started
    for name, weighted in sets.items():
        score = sum(w * logp[(dy, dx, f)] for dy, dx, f, w in weighted)
        top1 = float(np.mean(score.argmax(-1) == data.val.labels))
        print(json.dumps({"views": name, "count": len(weighted), "val_top1": round(top1, 4)}), flush=True)
    print(json.dumps({"run": str(args.run), "val_images": len(data.val), "distinct_views": len(views),
                      "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
