"""The Python API: the CLI's commands as functions for notebooks and scripts.

    import kclassify
    run = kclassify.fit("quickstart", train={"epochs": 3}, out="runs/q")   # a Run
    print(run.metrics["val"]["top1"])
    report = kclassify.evaluate(run.dir)                                 # the recipe's TTA
    kclassify.export(run.dir, "int8")
    model = kclassify.build_model("resnet20", num_classes=10, input_shape=(32, 32, 3))

A recipe is a shipped recipe's name, a YAML path, a dict of sections or a Recipe; keyword
sections (`train={...}`) are merged into it and `overrides=["train.lr=0.1"]` work as --set does.
Importing this module does not import TensorFlow; calling a function does, except fit, finetune
and evaluate on JAX where TensorFlow is not installed.
"""


def _prepared(recipe, overrides, sections, command=None, schedule=None):
    """The validated recipe, checked for `command` before TensorFlow (where the backend uses it) is imported."""
    from kclassify import runtime
    from kclassify.recipe import recipe_from

    cfg = recipe_from(recipe, overrides, sections)
    if command == "fit":
        from kclassify.commands.checks import check_fit_recipe

        check_fit_recipe(cfg)
    elif command == "finetune":
        from kclassify.commands.checks import check_finetune_recipe, resolve_phases

        cfg = resolve_phases(cfg, schedule)
        check_finetune_recipe(cfg)
    runtime.quiet_framework()
    return cfg


def fit(recipe, *, out=None, fresh=False, teacher=None, overrides=(), callbacks=(), echo=print, **sections):
    """Train a recipe (resuming its run folder when interrupted); returns the `Run`."""
    extra = [f"train.distill.teacher={teacher}"] if teacher else []
    cfg = _prepared(recipe, [*overrides, *extra], sections, "fit")
    from kclassify.commands.fit import fit as run_fit
    from kclassify.run import Run

    return Run.load(run_fit(cfg, out=out, fresh=fresh, echo=echo, callbacks=callbacks))


def finetune(recipe, *, schedule=None, out=None, fresh=False, dry_run=False, overrides=(), callbacks=(), echo=print,
             **sections):
    """Fine-tune a pretrained backbone in phases (`schedule` like "head:3,top2:3,all:6");
    returns the `Run` (None for a dry run)."""
    cfg = _prepared(recipe, overrides, sections, "finetune", schedule)
    from kclassify.commands.finetune import finetune as run_finetune
    from kclassify.run import Run

    folder = run_finetune(cfg, schedule=None, out=out, fresh=fresh, dry_run=dry_run, echo=echo,
                          callbacks=callbacks)
    return Run.load(folder) if folder else None


def evaluate(model_or_run, *, data=None, tta=None, json_out=None, echo=print):
    """Top-1/top-5, per-class table and confusion matrix of a model or run (its recipe's TTA
    unless `tta` names a preset); returns the report dict."""
    from kclassify import runtime
    from kclassify.commands.evaluate import run_evaluate

    runtime.quiet_framework()
    return run_evaluate(model_or_run, data, json_out, echo=echo, tta=tta)


def export(model_or_run, quant="int8", *, out=None, data=None, calibration_images=None, tta=None, max_drop=None,
           max_float=None, allow_flex=False, float_layers=None, input_size=None, bias_correction=True, echo=print):
    """A builtins-only .tflite in mode `quant` of a run, .keras file or ExportJob, measured with
    LiteRT; returns its report dict.
    `tta` (a preset) puts the test-time views and their average inside the file; `max_drop`
    (top-1 points) is the int8 max-drop limit (default: the run recipe's output.max_drop), searched
    over at most `max_float` layers kept in float, refused (MaxDropNotMet) where none is within it;
    calibrated modes correct the biases for the int8 weights' rounding unless `bias_correction` is False."""
    from kclassify import runtime

    runtime.quiet_tensorflow()
    from kclassify.commands.export import ExportJob
    from kclassify.commands.export import RECIPE

    job = model_or_run if isinstance(model_or_run, ExportJob) else ExportJob(
        model_or_run, data_spec=data, calibration_count=calibration_images, input_size=input_size)
    if tta and tta != "none":
        out = out or job.default_out(f"{quant}_tta")
        job.model = _tta_wrapped(job.model, tta)
    rep = job.export(quant, out, allow_flex=allow_flex, float_layers=float_layers,
                     max_drop=RECIPE if max_drop is None else max_drop, max_float=max_float, echo=echo,
                     bias_correction=bias_correction)
    measured = (f"top-1 {rep['tflite']['top1']:.4f} (Keras {rep['keras']['top1']:.4f}), agreement {rep['agreement']:.4f}"
                if "tflite" in rep else rep.get("note", ""))
    echo(f"{rep['file']}: {rep['size_bytes']:,} bytes, {quant}{f', TTA {tta}' if tta else ''}, input "
         f"{rep['input']['dtype']} {rep['input']['shape']}; {measured}")
    return rep


def _tta_wrapped(model, preset):
    from kclassify.recipe import EvaluateConfig
    from kclassify.tta import tta_model, views_of

    cfg = EvaluateConfig(tta=preset)
    return tta_model(model, views_of(cfg), cfg.average)


def augment_preview(recipe, out, count=32, data=None, echo=print):
    """A grid of `count` training images as the recipe's training pipeline delivers them (crops,
    flips, ops, MixUp/CutMix, smoothed labels), written to `out`; `data` skips loading it again."""
    from kclassify import runtime
    from kclassify.recipe import recipe_from

    recipe = recipe_from(recipe)
    runtime.check_backend(recipe, runtime.keras_backend(), echo=lambda *a: None)  # the pipeline this backend runs
    runtime.setup(recipe.runtime, echo=lambda *a: None)
    from kclassify.commands.augment import write_preview

    write_preview(recipe, out, count, data, echo)


def build_model(name, num_classes, input_shape, **params):
    """A registered model (kclassify models list) as a Keras functional model."""
    from kclassify import runtime

    runtime.quiet_tensorflow()
    from kclassify.models import build_model as build

    return build(name, num_classes, input_shape, **params)
