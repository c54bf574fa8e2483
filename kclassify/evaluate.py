"""`kclassify evaluate`: a model (or run folder) on a data split: top-1/top-5, per-class
precision/recall/F1, confusion matrix as JSON and PNG."""
import json
from pathlib import Path

import numpy as np

from kclassify.errors import DataError, ModelFileError
from kclassify.metrics import classification_report, cross_entropy


def resolve_model_path(path):
    """A .keras file, or a run folder holding model.keras; (model_file, run_dir or None)."""
    from kclassify.run import Run

    file, run = Run.resolve(path)
    return file, (run.dir if run is not None else None)


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


def predict(model, images, batch_size=None, views=1):
    """Probabilities for uint8 images (an array, a Split or a streamed split); batch_size None: one
    that fits the image size and the model's test-time `views` (pipeline.eval_batch_size)."""
    from kclassify.data.pipeline import eval_dataset
    from kclassify.data.sources import Split
    from kclassify.train.loop import predictor

    split = images if hasattr(images, "labels") else Split(images, np.zeros(len(images), np.int32))
    return predictor(model)(eval_dataset(split, 1, batch_size, views))


def evaluate_model(model, split, class_names, batch_size=None, views=None, average="logits"):
    """(report, probabilities) on a split; with `views` (kclassify.tta), the weighted average of
    the test-time views."""
    from kclassify.tta import tta_model

    probs = predict(tta_model(model, views, average) if views else model, split, batch_size, len(views or [None]))
    report = classification_report(probs, split.labels, class_names)
    report["loss"] = cross_entropy(probs, split.labels)
    return report, probs


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
    from kclassify.data import SOURCES
    from kclassify.run import Run

    size = model.input_shape[1]
    if spec:
        cfg = parse_data_spec(spec, size)
        data = SOURCES.get(cfg.source)(cfg, seed)
        split = data.val if (cfg.source == "tfds" or len(data.val)) else data.train
        names = data.class_names
    elif run_dir is not None:
        data = Run.load(run_dir).data()
        split, names = data.val, data.class_names
    else:
        raise DataError("a bare model file needs --data SPEC (e.g. image_folder:/path/to/dir)")
    shape = tuple(split.images.shape[1:]) if hasattr(split, "images") else tuple(split.image_shape)
    if shape != tuple(model.input_shape[1:]):
        raise DataError(f"data images are {shape} but the model takes {tuple(model.input_shape[1:])}")
    return split, names


def run_evaluate(path, spec=None, json_out=None, echo=print, tta=None):
    """Evaluate a model or run folder. TTA: `tta` (a preset name) overrides the run recipe's
    evaluate section, so `kclassify evaluate RUN` reproduces the figure the run reported."""
    from kclassify import runtime
    from kclassify.metrics import format_report
    from kclassify.recipe import EvaluateConfig
    from kclassify.run import Run
    from kclassify.tta import view_count, views_of

    runtime.quiet_tensorflow()
    model, run_dir = load_model(path)
    split, names = evaluation_split(run_dir, spec, model)
    recipe = Run(run_dir).recipe if run_dir is not None and (Path(run_dir) / "recipe.yaml").exists() else None
    cfg = recipe.evaluate if recipe is not None else EvaluateConfig()
    if tta is not None:
        cfg = cfg.model_copy(update={"tta": tta})
    if recipe is not None and not recipe.augment.flip and any(v[2] for v in views_of(cfg)):
        echo(f"warning: TTA '{cfg.tta}' averages mirrored views, but this run trained without augment.flip: "
             "for classes a mirror changes (digits, text) use --tta none")
    report, _ = evaluate_model(model, split, names, cfg.batch_size, views_of(cfg) if view_count(cfg) else None,
                               cfg.average)
    report["tta"] = cfg.tta
    report["views"] = max(view_count(cfg), 1)
    shown = f" (TTA: {cfg.tta}, {view_count(cfg)} views)" if view_count(cfg) else ""
    echo(format_report(report, title=f"evaluation of {path}{shown}"))
    out_dir = Path(json_out).parent if json_out else (run_dir or Path(path).parent)
    write_report(report, out_dir, "eval")
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
    return report
