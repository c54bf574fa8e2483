"""`kclassify fit`: recipe -> data -> model -> fit with checkpoints -> run folder."""
import json
import sys
from pathlib import Path

import yaml

from kclassify.errors import RecipeError, TrainingDiverged
from kclassify.train.callbacks import read_state, write_json


def check_resume(run_dir, recipe, fresh):
    """Return the saved training state to resume from, or None to start anew."""
    saved = run_dir / "recipe.yaml"
    state = read_state(run_dir)
    if fresh or state is None or not saved.exists():
        if fresh and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir / "ckpt", ignore_errors=True)
        return None
    diffs = recipe_diff(yaml.safe_load(saved.read_text()), recipe.model_dump(mode="json"))
    if diffs:
        raise RecipeError(f"{run_dir} holds a run of a different recipe ({'; '.join(diffs[:5])}).\n"
                          "  Use --fresh to start it over, or --out DIR for a new run folder.")
    return state


def recipe_diff(old, new, prefix=""):
    """Differences that change training (output and verbosity may change on resume)."""
    out = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if path in ("output", "runtime.verbose"):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_diff(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def start_run_dir(run_dir, recipe, data, echo):
    """Write the resolved recipe and the label/input spec into the run folder; report the data."""
    for note in data.notes:
        echo(f"note: {note}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    write_json(run_dir / "labels.json", {"class_names": data.class_names, "input_shape": list(data.input_shape),
                                         "train_images": len(data.train), "val_images": len(data.val)})
    echo(f"data: {len(data.train)} train / {len(data.val)} val images, {len(data.class_names)} classes, "
         f"shape {data.input_shape}")


def fit(recipe, out=None, fresh=False, echo=print):
    """Train per the recipe into the run folder, resuming a run that was interrupted."""
    run_dir = Path(out) if out else recipe.run_dir()
    state = check_resume(run_dir, recipe, fresh)
    if state and state["epoch"] >= recipe.train.epochs and (run_dir / "model.keras").exists():
        echo(f"{run_dir}: already trained for {state['epoch']} epochs (use --fresh to train again)")
        return run_dir

    from kclassify import runtime

    strategy = runtime.setup(recipe.runtime)
    from kclassify.data import load_data
    from kclassify.data.pipeline import eval_dataset, recipe_train_dataset

    data = load_data(recipe.data, recipe.runtime.seed)
    start_run_dir(run_dir, recipe, data, echo)
    mean, std = data.channel_stats()

    t = recipe.train
    k = len(data.class_names)
    steps = max(len(data.train) // t.batch_size, 1)
    if t.steps_per_epoch and t.steps_per_epoch < steps:
        steps = t.steps_per_epoch
    val_ds = eval_dataset(data.val, k, t.batch_size)
    model, trainer, checkpointer = _compiled_model(recipe, data, mean, std, steps, strategy, run_dir, state, echo)
    averager = _averager(recipe, model, run_dir, checkpointer.state["epoch"])
    callbacks = [*averager, checkpointer, *_extra_callbacks(recipe, model, steps, run_dir)]
    for first, last, mix in _segments(recipe):
        if checkpointer.state["epoch"] >= last or checkpointer.diverged:
            continue
        train_ds = recipe_train_dataset(recipe, data.train, k, mix=mix)
        if t.steps_per_epoch:
            train_ds = train_ds.repeat()
        trainer.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=max(checkpointer.state["epoch"], first),
                  steps_per_epoch=steps if t.steps_per_epoch else None, callbacks=callbacks,
                  verbose=_verbose(recipe), shuffle=False)
    if checkpointer.diverged:
        ep, batch, loss = checkpointer.diverged
        raise TrainingDiverged(f"loss became {loss} at epoch {ep}, step {batch}; training stopped. "
                               f"The last good checkpoint (epoch {checkpointer.state['epoch']}) is kept in "
                               f"{run_dir / 'ckpt'}. Lower train.lr or raise train.warmup_epochs.")
    if averager and averager[0].apply(recipe_train_dataset(recipe, data.train, k, mix=False)):
        echo(f"using the {recipe.train.average.kind.upper()} weights ({averager[0].count} averaged)")
    finalize(model, data, recipe, run_dir, checkpointer.state, echo)
    return run_dir


def _averager(recipe, model, run_dir, epochs_done):
    if recipe.train.average is None:
        return []
    from kclassify.train.averaging import WeightAverage

    return [WeightAverage(recipe.train.average, model, run_dir, epochs_done)]


def _segments(recipe):
    """(first, last, mix) epoch ranges: MixUp/CutMix switch off for the last mix_off_epochs."""
    epochs, off = recipe.train.epochs, min(recipe.augment.mix_off_epochs, recipe.train.epochs)
    mixing = recipe.augment.mixup_alpha > 0 or recipe.augment.cutmix_alpha > 0
    if mixing and off:
        return [(0, epochs - off, True), (epochs - off, epochs, False)]
    return [(0, epochs, True)]


def _extra_callbacks(recipe, model, steps, run_dir):
    import keras

    callbacks = []
    if recipe.output.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "logs"), update_freq="epoch"))
    from kclassify.train.dropblock_schedule import DropBlockSchedule, dropblock_layers

    if dropblock_layers(model):
        callbacks.append(DropBlockSchedule(by="step", epochs=recipe.train.epochs, steps_per_epoch=steps))
    return callbacks


def _verbose(recipe):
    verbose = recipe.runtime.verbose
    return (1 if sys.stdout.isatty() else 2) if verbose == "auto" else verbose


def _compiled_model(recipe, data, mean, std, steps, strategy, run_dir, state, echo):
    """(model, trainer, checkpointer): the trainer is the model itself, or the model beside its
    frozen teacher when distilling; checkpoints hold the trainer with its optimizer state."""
    from kclassify.models import build_model
    from kclassify.train.callbacks import Checkpointer
    from kclassify.train.optim import make_loss, make_metrics, make_optimizer

    k = len(data.class_names)
    distill = recipe.train.distill
    with strategy.scope():
        model = build_model(recipe.model.name, k, data.input_shape, mean=mean, std=std,
                            bn_momentum=recipe.train.bn_momentum, **recipe.model.params)
        optimizer = make_optimizer(recipe.train, steps, model)
        if distill:
            from kclassify.train.distill import DistillationLoss, distillation_model, student_metrics

            trainer = distillation_model(model, distill.teacher)
            loss, metrics = DistillationLoss(k, distill.alpha, distill.temperature), student_metrics(k)
        else:
            trainer, loss, metrics = model, make_loss(recipe.train), make_metrics(k)
        trainer.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=recipe.runtime.jit_compile)
        if state:
            optimizer.build(trainer.trainable_variables)
            trainer.load_weights(run_dir / "ckpt" / state["file"])
            echo(f"resuming {run_dir} after epoch {state['epoch']} "
                 f"(optimizer step {int(optimizer.iterations)}, lr {float(optimizer.learning_rate):.5f})")
    echo(f"model: {recipe.model.name}, {model.count_params():,} parameters; "
         f"replicas: {strategy.num_replicas_in_sync}" + (f"; distilling from {distill.teacher}" if distill else ""))
    return model, trainer, Checkpointer(run_dir, state)


def finalize(model, data, recipe, run_dir, state, echo):
    """Save the model, evaluate it on the validation split, write metrics, plots and exports."""
    from kclassify.evaluate import evaluate_model, write_report
    from kclassify.plots import plot_history

    import keras

    # The saved model is the inference network without optimizer state (checkpoints keep that):
    # it loads in plain Keras and carries nothing a deployment does not need.
    keras.Model(model.input, model.output, name=model.name).save(run_dir / "model.keras")
    report = evaluate_model(model, data.val, data.class_names, recipe.train.batch_size)
    metrics = {"val": {"top1": report["top1"], "top5": report["top5"], "loss": report["loss"]},
               "epochs": state["epoch"], "train_seconds": round(state["train_seconds"], 1),
               "params": int(model.count_params()), "model": recipe.model.name,
               "train_images": len(data.train), "val_images": len(data.val)}
    write_json(run_dir / "metrics.json", metrics)
    write_report(report, run_dir, "val", plots=recipe.output.plots)
    if recipe.output.plots and (run_dir / "history.csv").exists():
        plot_history(run_dir / "history.csv", run_dir / "curves.png")
    from kclassify.metrics import format_report

    echo(format_report(report, title=f"validation ({recipe.model.name})"))
    echo(json.dumps(metrics))
    from kclassify.export import ExportJob

    job = ExportJob(run_dir, model=model, data=data, calibration_count=recipe.output.calibration_images)
    for mode in recipe.output.export:
        rep = job.export(mode)
        echo(f"export {mode}: {rep['file']} {rep['size_bytes']:,} bytes, top-1 {rep['tflite']['top1']:.4f}, "
             f"agreement with Keras {rep['agreement']:.4f}")
