"""`kclassify evaluate`: a model (or run folder) on a data split: top-1/top-5, per-class
precision/recall/F1, confusion matrix as JSON and PNG."""
import json
from pathlib import Path

import numpy as np

from kclassify.errors import DataError, ModelFileError
from kclassify.metrics import classification_report, cross_entropy


def resolve_model_path(path):
    """A .keras file, or a run folder holding model.keras; (model_file, run_dir or None)."""
    p = Path(path)
    if p.is_dir():
        if not (p / "model.keras").exists():
            raise ModelFileError(f"{p} is not a finished run folder (no model.keras inside)")
        return p / "model.keras", p
    if not p.exists():
        raise ModelFileError(f"model not found: {str(path)!r}")
    run_dir = p.parent if (p.parent / "recipe.yaml").exists() else None
    return p, run_dir


def load_model(path):
    """Load a .keras model with kclassify's custom objects; a clear error if it is not one."""
    import keras

    import kclassify

    kclassify.register_custom_objects()
    file, run_dir = resolve_model_path(path)
    try:
        return keras.models.load_model(file, compile=False), run_dir
    except Exception as exc:
        raise ModelFileError(f"{file} is not a loadable Keras model ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from None


def predict(model, images, batch_size=256):
    from kclassify.data.pipeline import eval_dataset
    from kclassify.data.sources import Split

    ds = eval_dataset(Split(images, np.zeros(len(images), np.int32)), 1, batch_size).map(lambda x, y: x)
    return model.predict(ds, verbose=0)


def tta_views(images, tta, pad=4):
    """The test-time views of a uint8 batch: itself, + its mirror ("flip"), or the centre and
    four crops shifted by `pad` pixels of a reflect-padded copy, each also mirrored ("crops")."""
    if tta in (None, "none"):
        return [images]
    views = [images]
    if tta == "crops":
        h, w = images.shape[1:3]
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        views += [padded[:, dy:dy + h, dx:dx + w] for dy, dx in ((0, 0), (0, 2 * pad), (2 * pad, 0), (2 * pad, 2 * pad))]
    return views + [v[:, :, ::-1] for v in views]


def evaluate_model(model, split, class_names, batch_size=256, tta=None):
    """Report on a split; with `tta`, probabilities are averaged over the test-time views."""
    probs = np.mean([predict(model, np.ascontiguousarray(v), batch_size) for v in tta_views(split.images, tta)], axis=0)
    report = classification_report(probs, split.labels, class_names)
    report["loss"] = cross_entropy(probs, split.labels)
    return report


def write_report(report, out_dir, prefix, plots=True):
    """<prefix>_report.json (everything) and <prefix>_confusion.json/.png."""
    out_dir = Path(out_dir)
    (out_dir / f"{prefix}_report.json").write_text(json.dumps(report, indent=1))
    (out_dir / f"{prefix}_confusion.json").write_text(
        json.dumps({"class_names": report["class_names"], "matrix": report["confusion"]}))
    if plots:
        from kclassify.plots import plot_confusion

        plot_confusion(report["confusion"], report["class_names"], out_dir / f"{prefix}_confusion.png")


def parse_data_spec(spec, image_size):
    """'digits', 'image_folder:/dir', 'npz:/file.npz', 'tfds:cifar100[:split]' -> a DataConfig
    whose whole set (for tfds: the named split, default test) is the evaluation data."""
    from kclassify.recipe import DataConfig

    source, _, rest = spec.partition(":")
    fields = {"source": source, "image_size": image_size, "val_fraction": 0.0}
    if source in ("image_folder", "npz"):
        fields["path"] = rest
    elif source == "tfds":
        name, _, split = rest.partition(":")
        fields.update(name=name, val_path=split or "test")
    return DataConfig(**fields)


def evaluation_split(run_dir, spec, model, seed=0):
    """The split to evaluate on: the --data spec, else the run's own validation split."""
    from kclassify.data import SOURCES, load_data
    from kclassify.recipe import load_recipe

    size = model.input_shape[1]
    if spec:
        cfg = parse_data_spec(spec, size)
        data = SOURCES.get(cfg.source)(cfg, seed)
        split = data.val if (cfg.source == "tfds" or len(data.val)) else data.train
        names = data.class_names
    elif run_dir is not None:
        recipe = load_recipe(run_dir / "recipe.yaml")
        data = load_data(recipe.data, recipe.runtime.seed)
        split, names = data.val, data.class_names
    else:
        raise DataError("a bare model file needs --data SPEC (e.g. image_folder:/path/to/dir)")
    if split.images.shape[1:] != tuple(model.input_shape[1:]):
        raise DataError(f"data images are {split.images.shape[1:]} but the model takes {tuple(model.input_shape[1:])}")
    return split, names


def run_evaluate(path, spec=None, json_out=None, echo=print, tta=None):
    from kclassify import runtime
    from kclassify.metrics import format_report

    runtime.quiet_tensorflow()
    model, run_dir = load_model(path)
    split, names = evaluation_split(run_dir, spec, model)
    report = evaluate_model(model, split, names, tta=tta)
    report["tta"] = tta or "none"
    echo(format_report(report, title=f"evaluation of {path}" + (f" (TTA: {tta})" if tta else "")))
    out_dir = Path(json_out).parent if json_out else (run_dir or Path(path).parent)
    write_report(report, out_dir, "eval")
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
    return report
