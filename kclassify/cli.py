"""The `kclassify` command. Each command parses options and calls the library; no logic here."""
import os
import sys

import click

from kclassify.errors import KClassifyError
from kclassify.tflite.modes import MODES as EXPORT_MODES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kclassify")
def cli():
    """Image classification on Keras 3 from recipe files."""


@cli.command()
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. train.epochs=3.")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: runs/<recipe name>).")
@click.option("--fresh", is_flag=True, help="Discard checkpoints in the run folder and start over.")
@click.option("--teacher", type=click.Path(), help="Distill from this trained model (sets train.distill.teacher).")
def fit(recipe, overrides, out, fresh, teacher):
    """Train from RECIPE (a YAML file or a shipped recipe name); resumes an interrupted run."""
    import kclassify

    run = kclassify.fit(recipe, out=out, fresh=fresh, teacher=teacher, overrides=overrides, echo=click.echo)
    click.echo(f"run folder: {run.dir}")


@cli.command()
@click.argument("recipe")
@click.option("--unfreeze-schedule", "schedule", metavar="GROUP:EPOCHS[@LR],...",
              help="Phases, e.g. head:3,top2:3,all:6 (groups: head, all, topN, re:REGEX).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: runs/<recipe name>).")
@click.option("--fresh", is_flag=True, help="Discard checkpoints in the run folder and start over.")
@click.option("--dry-run", is_flag=True, help="Print which layers train in each phase, then stop.")
def finetune(recipe, schedule, overrides, out, fresh, dry_run):
    """Fine-tune a pretrained backbone in phases (head first, then deeper blocks)."""
    import kclassify

    run = kclassify.finetune(recipe, schedule=schedule, out=out, fresh=fresh, dry_run=dry_run, overrides=overrides,
                             echo=click.echo)
    if run:
        click.echo(f"run folder: {run.dir}")


TTA_PRESETS = ["none", "flip", "mirror_translate", "crops"]


@cli.command()
@click.argument("model_or_run")
@click.option("--data", "spec", help="image_folder:/dir, npz:/file.npz, tfds:NAME[:split], or digits.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the full report here.")
@click.option("--tta", type=click.Choice(TTA_PRESETS), default=None,
              help="Test-time augmentation preset (default: the run recipe's evaluate.tta, else none).")
def evaluate(model_or_run, spec, json_out, tta):
    """Top-1/top-5, per-class precision/recall/F1 and the confusion matrix of a model."""
    import kclassify

    kclassify.evaluate(model_or_run, data=spec, tta=tta, json_out=json_out, echo=click.echo)


@cli.command()
@click.argument("recipe")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Local worker processes.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: runs/<recipe name>).")
@click.option("--fresh", is_flag=True, help="Discard checkpoints in the run folder and start over.")
@click.option("--command", "command", type=click.Choice(["fit", "finetune"]), default="fit", show_default=True)
def launch(recipe, workers, overrides, out, fresh, command):
    """Run RECIPE on N local workers (MultiWorkerMirroredStrategy over localhost ports): for testing
    a cluster set-up on one machine. Each worker's output is prefixed with its index."""
    from kclassify.commands.launch import launch_local

    sys.exit(launch_local(recipe, workers, overrides, out, fresh, command, echo=click.echo))


@cli.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="HTML file (default: RUN/report.html).")
def report(run, out):
    """One self-contained HTML page about a finished run: metrics, data, curves, weak classes,
    confused pairs, wrong images, calibration, augmentation and exports."""
    from kclassify import runtime
    from kclassify.commands.report import write_html_report

    runtime.quiet_framework()
    write_html_report(run, out or os.path.join(run, "report.html"), echo=click.echo)


@cli.command()
@click.argument("model_or_run")
@click.option("--tflite", is_flag=True, required=True, help="Export to TFLite (the one format for now).")
@click.option("--quant", type=click.Choice(list(EXPORT_MODES)), default="float32", show_default=True,
              help="Mode from the table: " + "; ".join(f"{k}: {m.summary}" for k, m in EXPORT_MODES.items()))
@click.option("--compare", is_flag=True, help="Export every mode and write one table (compare.md/.json).")
@click.option("--out", type=click.Path(), help="Output .tflite (default: beside the model); with --compare, a folder.")
@click.option("--data", "spec", help="Calibration/evaluation data for a bare .keras file (as in evaluate).")
@click.option("--calibration-images", type=click.IntRange(1), help="Unaugmented training images for calibration (default: the recipe's output.calibration_images, auto: 32 a class, 300 to 1000).")
@click.option("--max-drop", type=click.FloatRange(min=0, min_open=True), metavar="POINTS",
              help="Top-1 points the int8 file may lose (default: the recipe's output.max_drop): keep the worst layers in float until "
                   "at most POINTS %% of the validation images (labels unused) change class against float; refused (exit 2, no file) "
                   "when no attempt gets there.")
@click.option("--max-float-layers", type=click.IntRange(1), help="With --max-drop: try at most the N worst layers in float (default 10).")
@click.option("--debug-quant", is_flag=True, help="Run the TFLite quantization debugger; print the layers with the largest error.")
@click.option("--float-layers", metavar="REGEX", help="Keep ops whose (Keras layer) names match REGEX in float.")
@click.option("--no-bias-correction", is_flag=True,
              help="Calibrated modes: leave the biases as trained (by default they are corrected for the int8 weights' rounding).")
@click.option("--allow-flex", is_flag=True, help="Allow TensorFlow (Flex) ops; the device runtime must link the Flex delegate.")
@click.option("--input-size", type=click.IntRange(8, 4096), help="Take N x N frames and resize to the network's size inside the graph.")
@click.option("--tta", type=click.Choice(TTA_PRESETS), default=None,
              help="Put these test-time views and their average inside the file (measured like any export).")
@click.option("--kit", "kit_dir", type=click.Path(file_okay=False), help="Also copy the on-device kit (evaluate/benchmark/predict) into this folder.")
def export(model_or_run, tflite, quant, compare, out, spec, calibration_images, max_drop, max_float_layers, debug_quant,
           float_layers, no_bias_correction, allow_flex, input_size, tta, kit_dir):
    """Export a run (or .keras file) to a builtins-only .tflite and measure it with LiteRT."""
    import kclassify
    from kclassify import runtime

    if compare and tta:
        raise click.UsageError("--tta makes one file; --compare exports every mode without views: use one")
    runtime.quiet_tensorflow("the TFLite converter is TensorFlow's")
    from kclassify.commands.export import ExportJob, copy_kit

    job = ExportJob(model_or_run, data_spec=spec, calibration_count=calibration_images, input_size=input_size)
    if debug_quant:
        job.debug("int8" if quant in ("float32", "float16", "dynamic") else quant, click.echo)
    if compare:
        from kclassify.tflite.compare import compare_modes

        compare_modes(job, folder=out, echo=click.echo)
    else:
        kclassify.export(job, quant, out=out, tta=tta, max_drop=max_drop, max_float=max_float_layers,
                         allow_flex=allow_flex, float_layers=float_layers, bias_correction=not no_bias_correction,
                         echo=click.echo)
    if kit_dir:
        click.echo(f"kit copied to {copy_kit(kit_dir)}")


@cli.group()
def data():
    """Pack image folders into TFRecord shards (for data that does not fit in memory)."""


@data.command("pack")
@click.argument("folder", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the shards and manifest.json.")
@click.option("--subdir", help="Folder inside FOLDER (or inside the archive) holding the classes.")
@click.option("--max-side", type=click.IntRange(8), help="Shrink images whose longer side is above N (never enlarges).")
@click.option("--format", "fmt", type=click.Choice(["jpeg", "raw"]), default="jpeg", show_default=True,
              help="jpeg (quality 95, 4:4:4) or raw uint8 pixels.")
@click.option("--shard-mb", type=click.FloatRange(min=0.01), default=128, show_default=True, help="Size of each shard.")
@click.option("--strict", is_flag=True, help="Fail on the first file that is not an image (default: skip it, listed in the manifest).")
def data_pack(folder, out, subdir, max_side, fmt, shard_mb, strict):
    """Decode FOLDER/<class>/<images> once (oriented, 16-bit scaled, alpha composited) into
    shuffled TFRecord shards; train from them with data.source=tfrecord data.path=OUT."""
    from kclassify.data.pack import describe, pack_folder

    click.echo(describe(pack_folder(folder, out, subdir=subdir, max_side=max_side, fmt=fmt, shard_mb=shard_mb,
                                    strict=strict)))


@cli.group()
def recipes():
    """List and show the shipped recipes."""


@recipes.command("list")
def recipes_list():
    """Each shipped recipe with the first line of its header."""
    from kclassify.recipe import recipes_dir, shipped_recipes

    for name in shipped_recipes():
        first = (recipes_dir() / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        click.echo(f"{name:<18} {first}")


@recipes.command("show")
@click.argument("name")
@click.option("--resolved", is_flag=True, help="Print the validated recipe with every default filled in.")
def recipes_show(name, resolved):
    """Print a recipe (as written, or --resolved)."""
    from kclassify.recipe import find_recipe, load_recipe

    click.echo(load_recipe(name).to_yaml() if resolved else find_recipe(name).read_text())


@cli.group()
def augment():
    """Registered augmentations and a preview of a recipe's policy."""


@augment.command("list")
def augment_list():
    """Every registered augmentation with its parameters (for augment.ops)."""
    import inspect

    from kclassify import runtime

    runtime.quiet_tensorflow()
    from kclassify.augment.registry import AUGMENTS

    for name in AUGMENTS.names():
        params = ", ".join(str(p) for p in inspect.signature(AUGMENTS.get(name)).parameters.values())
        click.echo(f"{name:<16} {params}")


@augment.command("preview")
@click.argument("recipe")
@click.option("--out", default="augment_preview.png", show_default=True, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
@click.option("--count", default=32, show_default=True, help="Images in the grid.")
def augment_preview(recipe, out, overrides, count):
    """Write a grid of augmented training images with their labels."""
    from kclassify.recipe import load_recipe

    cfg = load_recipe(recipe, overrides)
    import kclassify.api

    kclassify.api.augment_preview(cfg, out, count, echo=click.echo)


@cli.group()
def models():
    """The model registry."""


@models.command("list")
@click.option("--fast", is_flag=True, help="Skip the models registered as slow (the full table builds every model).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the rows as JSON.")
def models_list(fast, json_out):
    """Every registered model: family, design input size, parameters and MACs."""
    import json
    from pathlib import Path

    from kclassify import runtime

    runtime.quiet_tensorflow()
    from kclassify.commands.profile import format_table, models_table

    rows = models_table(include_slow=not fast)
    for line in format_table(rows):
        click.echo(line)
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=2))


@cli.command()
@click.argument("name_or_file")
@click.option("--input-size", type=int, default=None,
              help="Square input side (default: the model's design size: 32 for CIFAR nets, 224 for ImageNet ones).")
@click.option("--num-classes", type=int, default=100, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the profile, per-layer MACs included.")
def profile(name_or_file, input_size, num_classes, json_out):
    """Parameters, MACs, activation memory and MicroNet score of a registered model or a .keras file."""
    from kclassify import runtime

    runtime.quiet_tensorflow()
    from kclassify.commands.profile import run_profile

    run_profile(name_or_file, input_size, num_classes, json_out, echo=click.echo)


@cli.command()
@click.argument("run")
@click.option("--epochs", type=int, help="Fine-tuning epochs (0 only calibrates; default: --steps).")
@click.option("--steps", type=int, help="Fine-tuning steps (default: qat.settle_steps, enough for the activation ranges to settle).")
@click.option("--lr", type=float, help="Peak learning rate, the run's optimizer, cosine to 0 (default: qat.lr_fraction x the run's last peak rate).")
@click.option("--keep", type=click.Choice(["better", "qat"]), help="Ship the better of QAT and post-training int8 (default), or the QAT file always.")
@click.option("--batch-size", type=int, help="Default: qat.batch_size, else train.batch_size.")
@click.option("--steps-per-epoch", type=int, help="Cap the steps of each epoch (smoke runs).")
@click.option("--out", type=click.Path(dir_okay=False), help="Output .tflite (default: RUN/model_qat_int8.tflite).")
def qat(run, epochs, steps, lr, keep, batch_size, steps_per_epoch, out):
    """Quantization-aware fine-tuning of a run (tfmot, in a tf_keras child process) to an int8
    .tflite with uint8 input, measured with LiteRT like `export` beside the post-training int8
    file; ships the better one. Needs kclassify[qat]."""
    from kclassify.qat import require_tfmot

    require_tfmot()
    from kclassify import runtime

    runtime.quiet_tensorflow()
    from kclassify.commands.qat import qat as run_qat

    run_qat(run, epochs=epochs, lr=lr, batch_size=batch_size, steps_per_epoch=steps_per_epoch, steps=steps, keep=keep,
            out=out, echo=click.echo)


@cli.command()
@click.argument("run")
@click.option("--sparsity", type=float, help="Fraction of each prunable kernel set to zero (default: qat.sparsity, 0.5).")
@click.option("--schedule", type=click.Choice(["polynomial", "constant"]), help="Sparsity schedule (default: polynomial).")
@click.option("--epochs", type=int, help="Fine-tuning epochs (default: qat.prune_epochs, 2).")
@click.option("--lr", type=float, help="Learning rate, SGD momentum (default: qat.prune_lr, 1e-3).")
@click.option("--batch-size", type=int, help="Default: qat.batch_size, else train.batch_size.")
@click.option("--steps-per-epoch", type=int, help="Cap the steps of each epoch (smoke runs).")
@click.option("--int8", is_flag=True, default=None, help="Also write an int8 copy (post-training quantized, uint8 input).")
@click.option("--out", type=click.Path(dir_okay=False), help="Output .tflite (default: RUN/model_pruned.tflite).")
def prune(run, sparsity, schedule, epochs, lr, batch_size, steps_per_epoch, int8, out):
    """Magnitude pruning while fine-tuning (tfmot, in a tf_keras child process) to a float32
    .tflite; reports the achieved sparsity and the gzip size. Needs kclassify[qat]."""
    from kclassify.qat import require_tfmot

    require_tfmot()
    from kclassify import runtime

    runtime.quiet_tensorflow()
    from kclassify.commands.qat import prune as run_prune

    run_prune(run, sparsity=sparsity, schedule=schedule, epochs=epochs, lr=lr, batch_size=batch_size,
              steps_per_epoch=steps_per_epoch, int8=int8 or None, out=out, echo=click.echo)


def main():
    """Entry point: user errors print one message and exit non-zero, without a traceback."""
    from kclassify import runtime

    runtime.mark_command_start()
    try:
        cli.main(standalone_mode=False)
    except KClassifyError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in runtime.TENSORFLOW_MODULES:
            raise
        # what no check refused by name: one line, not a traceback
        error = runtime.tensorflow_missing(f"this command needed {exc.name}")
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted: run the same command again to resume from the last finished epoch", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to resume from the last finished epoch", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
