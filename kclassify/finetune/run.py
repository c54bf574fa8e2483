"""`kclassify finetune`: phases of compile + fit over one continuing epoch counter.

Each phase sets which layers train, builds a fresh optimizer (its learning rate, and the
backbone's multiplier for discriminative rates) and compiles again: Keras only honours a
changed `trainable` after compile. Checkpoints are per epoch as in `fit`; a resumed run finds
its phase from the epoch count and, mid-phase, restores that phase's optimizer state too.
"""
import warnings
from pathlib import Path

from kclassify.errors import RecipeError, TrainingDiverged


def resolve_phases(recipe, schedule=None):
    """The recipe with finetune.phases filled from --unfreeze-schedule (recorded in recipe.yaml)."""
    from kclassify.finetune.groups import check_group, parse_schedule
    from kclassify.recipe import PhaseConfig

    ft = recipe.finetune
    if schedule:
        ft.phases = [PhaseConfig(**p) for p in parse_schedule(schedule)]
    if ft.mode == "phases" and not ft.phases:
        raise RecipeError("no fine-tuning phases: pass --unfreeze-schedule \"head:3,top2:3,all:6\" "
                          "or set finetune.phases in the recipe")
    for phase in ft.phases:
        check_group(phase.unfreeze)
        if phase.lr is None:
            phase.lr = recipe.train.lr * (1.0 if phase.unfreeze == "head" else ft.unfrozen_lr_scale)
        if phase.backbone_lr_mult is None:
            phase.backbone_lr_mult = ft.backbone_lr_mult
    recipe.train.epochs = sum(p.epochs for p in ft.phases) or recipe.train.epochs
    return recipe


def block_pattern(recipe):
    from kclassify.models import MODELS
    from kclassify.models.applications import block_regex

    backbone = MODELS.info(recipe.model.name).get("backbone")
    if backbone is None:
        raise RecipeError(f"model {recipe.model.name!r} is not a backbone model: use one of the keras_* models "
                          "(kclassify models list), e.g. keras_mobilenet, or keras_kclassify with weights=RUN/model.keras")
    return block_regex(backbone)


def phase_summary(model, phase, index, unfrozen):
    from kclassify.finetune.groups import is_bn

    trainable = [w for w in model.trainable_weights]
    count = sum(int(w.numpy().size) for w in trainable)
    backbone = model.get_layer("backbone")
    frozen_bn = sum(1 for layer in backbone.layers if is_bn(layer) and not layer.trainable)
    names = [layer.name for layer in unfrozen]
    shown = ", ".join(names[:6]) + (f", ... ({len(names)} layers)" if len(names) > 6 else "")
    return (f"phase {index + 1}: unfreeze {phase.unfreeze}, {phase.epochs} epoch(s), lr {phase.lr:g}, "
            f"backbone lr x{phase.backbone_lr_mult:g}\n"
            f"  trainable parameters: {count:,}; backbone layers training: {len(names)} "
            f"({shown or 'none'}); frozen BatchNorm layers: {frozen_bn}")


def finetune(recipe, schedule=None, out=None, fresh=False, dry_run=False, echo=print):
    """Fine-tune per the recipe's phases (or --unfreeze-schedule); returns the run folder."""
    from kclassify.train.fit import check_resume

    recipe = resolve_phases(recipe, schedule)
    pattern = block_pattern(recipe)
    run_dir = Path(out) if out else recipe.run_dir()
    state = None if dry_run else check_resume(run_dir, recipe, fresh)
    if state and state["epoch"] >= recipe.train.epochs and (run_dir / "model.keras").exists():
        echo(f"{run_dir}: already fine-tuned for {state['epoch']} epochs (use --fresh to start over)")
        return run_dir
    from kclassify import runtime

    strategy = runtime.setup(recipe.runtime)
    data, model = _data_and_model(recipe, strategy, run_dir, write=not dry_run, echo=echo)
    if dry_run:
        from kclassify.finetune.groups import apply_phase

        for i, phase in enumerate(recipe.finetune.phases):
            echo(phase_summary(model, phase, i, apply_phase(model, phase.unfreeze, pattern, recipe.finetune.train_bn)))
        return None
    if recipe.finetune.mode != "phases":
        from kclassify.finetune.probe import probe

        return probe(recipe, data, model, run_dir, echo)
    state = _run_phases(recipe, data, model, pattern, strategy, run_dir, state, echo)
    from kclassify.train.fit import finalize

    finalize(model, data, recipe, run_dir, state, echo)
    return run_dir


def _data_and_model(recipe, strategy, run_dir, write, echo):
    from kclassify.data import load_data
    from kclassify.models import build_model
    from kclassify.train.fit import start_run_dir

    data = load_data(recipe.data, recipe.runtime.seed)
    if write:
        start_run_dir(run_dir, recipe, data, echo)
    with strategy.scope():
        model = build_model(recipe.model.name, len(data.class_names), data.input_shape,
                            bn_momentum=recipe.train.bn_momentum, **recipe.model.params)
    return data, model


def _run_phases(recipe, data, model, pattern, strategy, run_dir, state, echo):
    from kclassify.data.pipeline import eval_dataset, recipe_train_dataset
    from kclassify.finetune.groups import apply_phase
    from kclassify.train.callbacks import Checkpointer
    from kclassify.train.fit import _verbose

    t, k = recipe.train, len(data.class_names)
    steps = max(len(data.train) // t.batch_size, 1)
    train_ds = recipe_train_dataset(recipe, data.train, k)
    val_ds = eval_dataset(data.val, k, t.batch_size)
    ckpt = Checkpointer(run_dir, state)
    start, begin = ckpt.state["epoch"], 0
    for i, phase in enumerate(recipe.finetune.phases):
        end = begin + phase.epochs
        if start < end:
            unfrozen = apply_phase(model, phase.unfreeze, pattern, recipe.finetune.train_bn)
            echo(phase_summary(model, phase, i, unfrozen))
            _compile_phase(model, recipe, phase, steps, unfrozen, strategy,
                           resume=(run_dir / "ckpt" / state["file"]) if state else None, mid_phase=start > begin)
            if state:
                where = "inside" if start > begin else "at the start of"
                echo(f"resuming {run_dir} after epoch {start}, {where} phase {i + 1} "
                     f"(optimizer step {int(model.optimizer.iterations)})")
            state = None  # loaded once, at the first phase that runs
            ckpt.tags = {"phase": i + 1, "unfreeze": phase.unfreeze}
            model.fit(train_ds, validation_data=val_ds, epochs=end, initial_epoch=max(start, begin),
                      callbacks=[ckpt], verbose=_verbose(recipe), shuffle=False)  # noqa
            if ckpt.diverged:
                ep, batch, loss = ckpt.diverged
                raise TrainingDiverged(f"loss became {loss} at epoch {ep}, step {batch} (phase {i + 1}); the last good "
                                       f"checkpoint (epoch {ckpt.state['epoch']}) is kept in {run_dir / 'ckpt'}")
        begin = end
    return ckpt.state


def _compile_phase(model, recipe, phase, steps, unfrozen, strategy, resume, mid_phase):
    """Fresh optimizer for the phase; a resumed run loads weights (and, mid-phase, the optimizer)."""
    from kclassify.train.optim import make_group_optimizer, make_loss, make_metrics

    train = recipe.train.model_copy(update={"lr": phase.lr, "epochs": phase.epochs, "warmup_epochs": 0.0})
    backbone_vars = {id(w) for layer in unfrozen for w in layer.trainable_weights}
    with strategy.scope():
        if resume is not None and not mid_phase:
            with warnings.catch_warnings():  # the checkpoint's optimizer belongs to the previous phase
                warnings.simplefilter("ignore")
                model.load_weights(resume, skip_mismatch=False)
        opt = make_group_optimizer(train, steps, model, [(v, phase.backbone_lr_mult) for v in model.trainable_variables
                                                         if id(v) in backbone_vars])
        model.compile(optimizer=opt, loss=make_loss(train), metrics=make_metrics(model.output_shape[-1]))
        if resume is not None and mid_phase:
            opt.build(model.trainable_variables)
            model.load_weights(resume)


