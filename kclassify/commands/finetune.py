"""`kclassify finetune`: phases over the training engine (kclassify.train.engine).

Each phase sets which layers train (head, topN blocks, all, or a regex), builds a fresh optimizer
(its learning rate, and the backbone's multiplier for discriminative rates) and compiles again:
Keras only honours a changed `trainable` after compile. Everything else (averaging, distillation,
mixing segments, the steps cap, DropBlock, TensorBoard, checkpoints, resume, recovery) is the
engine's, shared with `kclassify fit`.
"""
import time

from kclassify import runtime
from kclassify.commands.checks import check_finetune_recipe, resolve_phases
from kclassify.commands.finish import finish_run
from kclassify.data import load_data
from kclassify.errors import RecipeError
from kclassify.models import MODELS
from kclassify.models.applications import block_regex
from kclassify.run import training_run
from kclassify.train.engine import Phase
from kclassify.train.probe import probe
from kclassify.train.setup import build_for_run, finish_training, make_engine
from kclassify.train.unfreeze import apply_phase, is_bn


def block_pattern(recipe):
    backbone = MODELS.info(recipe.model.name).get("backbone")
    if backbone is None:
        raise RecipeError(f"model {recipe.model.name!r} is not a backbone model: use one of the keras_* models "
                          "(kclassify models list), e.g. keras_mobilenet, or keras_kclassify with weights=RUN/model.keras")
    return block_regex(backbone)


def phase_summary(model, phase, index, unfrozen):
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
    started = started or runtime.command_started() or time.time()
    if schedule or not recipe.finetune.phases or any(p.lr is None for p in recipe.finetune.phases):
        recipe = resolve_phases(recipe, schedule)
    check_finetune_recipe(recipe)
    runtime.check_backend(recipe, runtime.keras_backend(), echo)
    pattern = block_pattern(recipe)
    if dry_run:
        return _dry_run(recipe, pattern, echo)
    with training_run(recipe, out, fresh, "finetune", echo) as (run, strategy):
        if strategy is None:
            return run.dir
        data = _data(recipe)
        model = build_for_run(recipe, data, strategy, fresh_start=True, echo=echo)
        run.begin(recipe, data, echo)
        run.clear_final()
        if recipe.finetune.mode != "phases":
            if probe(recipe, data, model, run, echo):
                finish_run(run, model, data, recipe, echo)
            return run.dir
        engine = make_engine(recipe, run, data, model, strategy, echo, callbacks, started)
        engine.fit(engine_phases(recipe, pattern, echo))
        finish_training(engine, echo)
        finish_run(run, model, data, recipe, echo, budget=None, started=started)
    return run.dir


def _dry_run(recipe, pattern, echo):
    strategy = runtime.setup(recipe.runtime, echo)
    model = build_for_run(recipe, _data(recipe), strategy, fresh_start=True, echo=echo)
    for i, phase in enumerate(recipe.finetune.phases):
        echo(phase_summary(model, phase, i, apply_phase(model, phase.unfreeze, pattern, recipe.finetune.train_bn)))
    return None


def _data(recipe):
    return load_data(recipe.data, recipe.runtime.seed, augment=recipe.augment)
