"""`kclassify finetune`: phases over the training engine (kclassify.train.engine).

Each phase sets which layers train (head, topN blocks, all, or a regex), builds a fresh optimizer
(its learning rate, and the backbone's multiplier for discriminative rates) and compiles again:
Keras only honours a changed `trainable` after compile. Everything else (averaging, distillation,
mixing segments, the steps cap, DropBlock, TensorBoard, checkpoints, resume, recovery) is the
engine's, shared with `kclassify fit`.
"""
import time

from kclassify.errors import RecipeError


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


def check_finetune_recipe(recipe):
    """Fields the phased loop cannot honour are refused by name."""
    from kclassify.train.budget import check_budget_recipe

    t = recipe.train
    check_budget_recipe(recipe, "finetune")
    for name, value in (("warmup_epochs", t.warmup_epochs), ("warmup_fraction", t.warmup_fraction),
                        ("step_milestones", t.step_milestones), ("whiten_bias_epochs", t.whiten_bias_epochs),
                        ("bn_freeze_scale", t.bn_freeze_scale), ("bn_bias_lr_mult", t.bn_bias_lr_mult != 1.0)):
        if value:
            raise RecipeError(f"train.{name} is not honoured by kclassify finetune: each phase runs its own "
                              "schedule from its own learning rate (finetune.phases[].lr)")
    if recipe.model.init != "default":
        raise RecipeError("model.init is for training from scratch; kclassify finetune starts from pretrained weights")
    if t.low_res is not None:
        raise RecipeError("train.low_res is read by kclassify fit: a pretrained backbone's phases train at the "
                          "data's size")
    if t.data_filter is not None:
        raise RecipeError("train.data_filter is read by kclassify fit: a proxy trained from scratch cannot rank "
                          "images for a pretrained backbone")
    from kclassify import catalog

    if not catalog.load()["models"].get(recipe.model.name, {}).get("backbone"):
        raise RecipeError(f"model {recipe.model.name!r} is not a backbone model: use one of the keras_* models "
                          "(kclassify models list), e.g. keras_mobilenet, or keras_kclassify with weights=RUN/model.keras")


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

    count = sum(int(w.numpy().size) for w in model.trainable_weights)
    backbone = model.get_layer("backbone")
    frozen_bn = sum(1 for layer in backbone.layers if is_bn(layer) and not layer.trainable)
    names = [layer.name for layer in unfrozen]
    shown = ", ".join(names[:6]) + (f", ... ({len(names)} layers)" if len(names) > 6 else "")
    return (f"phase {index + 1}: unfreeze {phase.unfreeze}, {phase.epochs} epoch(s), lr {phase.lr:g}, "
            f"backbone lr x{phase.backbone_lr_mult:g}\n"
            f"  trainable parameters: {count:,}; backbone layers training: {len(names)} "
            f"({shown or 'none'}); frozen BatchNorm layers: {frozen_bn}")


def engine_phases(recipe, pattern, echo):
    """The engine's Phase list: each sets its layers and gives the backbone its lr multiplier."""
    from kclassify.finetune.groups import apply_phase
    from kclassify.train.engine import Phase

    ft = recipe.finetune
    phases = []
    for i, p in enumerate(ft.phases):
        train = recipe.train.model_copy(update={"lr": p.lr, "epochs": p.epochs, "warmup_epochs": 0.0,
                                                "lr_reference_batch": None})

        def setup(model, p=p, i=i):
            unfrozen = apply_phase(model, p.unfreeze, pattern, ft.train_bn)
            echo(phase_summary(model, p, i, unfrozen))
            return [(w, p.backbone_lr_mult) for layer in unfrozen for w in layer.trainable_weights]

        phases.append(Phase(f"phase {i + 1}", train, p.epochs, setup, {"phase": i + 1, "unfreeze": p.unfreeze}))
    return phases


def finetune(recipe, schedule=None, out=None, fresh=False, dry_run=False, echo=print, callbacks=(), started=None):
    """Fine-tune per the recipe's phases (or --unfreeze-schedule); returns the run folder."""
    from kclassify import runtime
    from kclassify.run import training_run

    started = started or runtime.command_started() or time.time()
    if schedule or not recipe.finetune.phases or any(p.lr is None for p in recipe.finetune.phases):
        recipe = resolve_phases(recipe, schedule)
    check_finetune_recipe(recipe)
    pattern = block_pattern(recipe)
    if dry_run:
        return _dry_run(recipe, pattern, echo)
    with training_run(recipe, out, fresh, "finetune", echo) as (run, strategy):
        if strategy is None:
            return run.dir
        data, model = _data_and_model(recipe, strategy)
        run.begin(recipe, data, echo)
        run.clear_final()
        if recipe.finetune.mode != "phases":
            from kclassify.finetune.probe import probe

            return probe(recipe, data, model, run, echo)
        from kclassify.train.fit import finish_training, make_engine

        engine = make_engine(recipe, run, data, model, strategy, echo, callbacks, started)
        engine.fit(engine_phases(recipe, pattern, echo))
        finish_training(engine, echo)
        run.finish(model, data, recipe, echo, budget=None, started=started)
    return run.dir


def _dry_run(recipe, pattern, echo):
    from kclassify import runtime
    from kclassify.finetune.groups import apply_phase

    strategy = runtime.setup(recipe.runtime, echo)
    _, model = _data_and_model(recipe, strategy)
    for i, phase in enumerate(recipe.finetune.phases):
        echo(phase_summary(model, phase, i, apply_phase(model, phase.unfreeze, pattern, recipe.finetune.train_bn)))
    return None


def _data_and_model(recipe, strategy):
    from kclassify.data import load_data
    from kclassify.export.calibration import hold_out_for_budget
    from kclassify.models import build_model
    from kclassify.train.fit import apply_runtime_options

    data = hold_out_for_budget(load_data(recipe.data, recipe.runtime.seed, augment=recipe.augment), recipe)
    with strategy.scope():
        model = build_model(recipe.model.name, len(data.class_names), data.input_shape,
                            bn_momentum=recipe.train.bn_momentum, **recipe.model.params)
    apply_runtime_options(model, recipe.runtime)
    return data, model
