"""`kclassify fit`: recipe -> run folder -> data -> model -> the engine (one phase) -> final reports."""
import time

from kclassify.errors import RecipeError


def check_fit_recipe(recipe):
    """Fields `fit` cannot honour are refused by name, before anything runs."""
    from kclassify.recipe import FinetuneConfig
    from kclassify.train.budget import check_budget_recipe

    if recipe.finetune != FinetuneConfig():
        changed = [k for k, v in recipe.finetune.model_dump().items() if v != FinetuneConfig().model_dump()[k]]
        raise RecipeError(f"finetune.{changed[0]} is read by `kclassify finetune`, not by `kclassify fit` "
                          "(remove the finetune section, or run kclassify finetune)")
    check_budget_recipe(recipe, "fit")
    if recipe.train.data_filter is not None and recipe.runtime.strategy != "default":
        # The proxy learns inside a tf.cond, where a replica context cannot merge its gradients.
        raise RecipeError(f"train.data_filter runs on one device; not with runtime.strategy {recipe.runtime.strategy} yet")
    if recipe.train.low_res is not None and recipe.train.distill is not None:
        raise RecipeError("train.low_res with train.distill: the teacher would see the smaller images too")


def fit(recipe, out=None, fresh=False, echo=print, callbacks=(), started=None):
    """Train per the recipe into its run folder, resuming an interrupted run; returns the folder."""
    from kclassify import runtime
    from kclassify.run import training_run

    started = started or runtime.command_started() or time.time()
    check_fit_recipe(recipe)
    with training_run(recipe, out, fresh, "fit", echo) as (run, strategy):
        if strategy is None:
            return run.dir
        from kclassify.data import load_data
        from kclassify.export.calibration import hold_out_for_budget
        from kclassify.train.data_filter import build_filter
        from kclassify.train.engine import Phase, low_res_shape

        data = hold_out_for_budget(load_data(recipe.data, recipe.runtime.seed, augment=recipe.augment), recipe)
        low_res_shape(recipe.train.low_res, data.train.image_shape)  # a size the images allow, before the model
        run.begin(recipe, data, echo)
        run.clear_final()
        model = build_for_run(recipe, data, strategy, fresh_start=not run.state["checkpoints"], echo=echo)
        engine = make_engine(recipe, run, data, model, strategy, echo, callbacks, started,
                             build_filter(recipe, data, strategy, echo))
        engine.fit([Phase("fit", recipe.train, recipe.train.epochs, setup=lambda m: fit_setup(m, recipe.train))])
        finish_training(engine, echo)
        run.finish(model, data, recipe, echo, budget=engine.budget, started=started)
    return run.dir


def make_engine(recipe, run, data, model, strategy, echo, callbacks, started, data_filter=None):
    from kclassify.train.engine import Engine

    teacher = recipe.train.distill.teacher if recipe.train.distill else None
    echo(f"model: {recipe.model.name}, {model.count_params():,} parameters; replicas: {strategy.num_replicas_in_sync}"
         + (f"; distilling from {teacher}" if teacher else ""))
    return Engine(recipe, run, data, model, strategy, echo, callbacks, started, teacher=teacher,
                  data_filter=data_filter)


def build_for_run(recipe, data, strategy, fresh_start, echo=print):
    """The recipe's model under the strategy; a fresh start also gets its data-dependent
    initialization (Dirac convolutions, the whitening stem from training images)."""
    from kclassify.layers.whitening import init_whitening, whitening_layers
    from kclassify.models import build_model
    from kclassify.models.init import dirac_init

    mean, std = data.channel_stats()
    with strategy.scope():
        model = build_model(recipe.model.name, len(data.class_names), data.input_shape, mean=mean, std=std,
                            bn_momentum=recipe.train.bn_momentum, **recipe.model.params)
    apply_runtime_options(model, recipe.runtime)
    if fresh_start and recipe.model.init == "dirac":
        echo(f"init: identity (Dirac) start for {dirac_init(model)} convolutions")
    if fresh_start and whitening_layers(model):
        t = time.time()
        init_whitening(model, training_sample(data.train, 5000, recipe.runtime.seed))
        echo(f"init: patch-whitening filters from 5,000 training images ({time.time() - t:.1f} s)")
    return model


def apply_runtime_options(model, runtime):
    """runtime.sync_bn: every BatchNorm reduces its batch statistics over all replicas (Keras' own
    code: the fused kernel has no cross-replica mode). runtime.fused_bn: the others train through
    the fused kernel."""
    import keras

    from kclassify.layers.fused_bn import fuse_batchnorm

    if runtime.sync_bn:
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    if runtime.fused_bn:
        fuse_batchnorm(model)


def training_sample(split, count, seed):
    import numpy as np

    idx = np.random.default_rng(seed).permutation(len(split))[:count]
    return split.take(np.sort(idx)) if hasattr(split, "take") else split.images[np.sort(idx)]


def fit_setup(model, train):
    """A fit phase's trainable set: everything, BatchNorm scales frozen if asked; the learning-rate
    multipliers of BatchNorm biases."""
    import keras

    bns = [layer for layer in model._flatten_layers(include_self=False)
           if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        if train.bn_freeze_scale and layer.gamma is not None:
            layer.gamma.trainable = False
    return [(layer.beta, train.bn_bias_lr_mult) for layer in bns if layer.beta is not None]


def finish_training(engine, echo):
    """After the last step: the averaged weights replace the trained ones."""
    averager = engine.averager
    if averager is None:
        return
    from kclassify.data.pipeline import recipe_train_dataset

    bn_data = recipe_train_dataset(engine.recipe, engine.data.train, engine.k, mix=False) \
        if averager.cfg.kind == "swa" else None
    if averager.apply(bn_data):
        echo(f"using the {averager.cfg.kind.upper()} weights ({averager.count} updates averaged)")
