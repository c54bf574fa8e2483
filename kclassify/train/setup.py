"""Setting up a training run's model and engine, shared by `fit` and `finetune`: one way to build
a run's model (the recipe's network under the strategy, runtime options applied, and on a fresh
start its data-dependent initialization), the engine around it, each phase's trainable set, and
the averaged weights at the end."""
import time

import keras
import numpy as np

from kclassify.layers.fused_bn import fuse_batchnorm
from kclassify.layers.whitening import init_whitening, set_whitening_bias_trainable, whitening_layers
from kclassify.models import MODELS, build_model
from kclassify.models.init import dirac_init
from kclassify.train import backends
from kclassify.train.engine import Engine


def make_engine(recipe, run, data, model, strategy, echo, callbacks, started, data_filter=None, clock=time.time):
    teacher = recipe.train.distill.teacher if recipe.train.distill else None
    echo(f"model: {recipe.model.name}, {model.count_params():,} parameters; replicas: {strategy.num_replicas_in_sync}"
         + (f"; distilling from {teacher}" if teacher else ""))
    return Engine(recipe, run, data, model, strategy, echo, callbacks, started, teacher=teacher,
                  data_filter=data_filter, clock=clock)


def build_for_run(recipe, data, strategy, fresh_start, echo=print):
    """The recipe's model under the strategy, fit and finetune alike; a fresh start also gets its
    data-dependent initialization (Dirac convolutions, the whitening stem from training images).
    A network trained from scratch normalizes with the data's channel statistics; a pretrained
    backbone keeps its own preprocessing, so its statistics are not computed."""
    pretrained = MODELS.info(recipe.model.name).get("backbone") is not None
    mean, std = (None, None) if pretrained else data.channel_stats()
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


def build_filter(recipe, data, strategy, echo=print):
    """The recipe's data filter (train/data_filter.py) with its proxy built and initialized like the
    model (Dirac, the whitening stem from training images), or None."""
    cfg = recipe.train.data_filter
    if cfg is None:
        return None
    proxy = build_for_run(recipe.model_copy(update={"model": cfg.proxy}), data, strategy, fresh_start=True,
                          echo=lambda *a, **k: None)
    set_whitening_bias_trainable(proxy, False)  # airbench's proxy never trains its stem
    batch = min(recipe.train.batch_size, len(data.train))
    echo(f"data filter: the model trains on the {cfg.kept(batch)} hardest of every {batch} images, "
         f"ranked by a proxy {cfg.proxy.name} ({proxy.count_params():,} parameters)")
    return backends.data_filter(cfg, proxy, batch)


def apply_runtime_options(model, runtime):
    """runtime.sync_bn: every BatchNorm reduces its batch statistics over all replicas (Keras' own
    code: the fused kernel has no cross-replica mode). runtime.fused_bn: the others train through
    the fused kernel."""
    if runtime.sync_bn:
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    if runtime.fused_bn:
        fuse_batchnorm(model)


def training_sample(split, count, seed):
    idx = np.random.default_rng(seed).permutation(len(split))[:count]
    return split.take(np.sort(idx)) if hasattr(split, "take") else split.images[np.sort(idx)]


def fit_setup(model, train):
    """A fit phase's trainable set: everything, BatchNorm scales frozen if asked; the learning-rate
    multipliers of BatchNorm biases."""
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
    bn_data = backends.prepared_batches(engine.recipe, engine.data.train, engine.k, mix=False) \
        if averager.cfg.kind == "swa" else None
    if averager.apply(bn_data):
        echo(f"using the {averager.cfg.kind.upper()} weights ({averager.count} updates averaged)")
