"""`kclassify evaluate`: a model (or run folder) on a data split: top-1/top-5, per-class
precision/recall/F1, confusion matrix as JSON and PNG."""
import json
from pathlib import Path

from kclassify.data import SOURCES
from kclassify.errors import DataError
from kclassify.inference import evaluate_model, write_evaluation
from kclassify.metrics import format_report
from kclassify.models.saving import load_model
from kclassify.recipe import DataConfig, EvaluateConfig
from kclassify.run import Run
from kclassify.tta import view_count, views_of


def parse_data_spec(spec, image_size):
    """'digits', 'image_folder:/dir', 'npz:/file.npz', 'tfds:cifar100[:split]' -> a DataConfig
    whose whole set (for tfds: the named split, default test) is the evaluation data."""

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

    model_path, run = Run.resolve(path)
    model, run_dir = load_model(model_path), (run.dir if run is not None else None)
    split, names = evaluation_split(run_dir, spec, model)
    recipe = Run(run_dir).recipe if run_dir is not None and (Path(run_dir) / "recipe.yaml").exists() else None
    cfg = recipe.evaluate if recipe is not None else EvaluateConfig()
    if tta is not None:
        cfg = cfg.model_copy(update={"tta": tta})
    if recipe is not None and not recipe.augment.flip and any(v[2] for v in views_of(cfg)):
        echo(f"warning: TTA '{cfg.tta}' averages mirrored views, but this run trained without augment.flip: "
             "for classes a mirror changes (digits, text) use --tta none")
    report, _ = evaluate_model(model, split, names, cfg.batch_size, views_of(cfg) if view_count(cfg) else None,
                               cfg.average, cfg.tta_fraction)
    report["tta"] = cfg.tta
    report["views"] = max(view_count(cfg), 1)
    shown = f" (TTA: {cfg.tta}, {view_count(cfg)} views)" if view_count(cfg) else ""
    echo(format_report(report, title=f"evaluation of {path}{shown}"))
    out_dir = Path(json_out).parent if json_out else (run_dir or Path(path).parent)
    write_evaluation(report, out_dir, "eval")
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
    return report
