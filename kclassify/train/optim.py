"""Optimizer, loss and metrics from a TrainConfig."""
import keras

from kclassify.train.schedules import schedule_from


def make_optimizer(train, steps_per_epoch, model):
    """SGD (momentum, Nesterov) or AdamW; weight decay skips biases and BatchNorm parameters.

    Recipes give weight decay as the papers do: an L2 term added to the gradient. Keras applies
    decay decoupled (w -= lr * wd * w, outside momentum); with momentum m the coupled form is
    amplified by 1/(1-m) in steady state, so SGD gets wd / (1 - m) to match the papers.
    AdamW is decoupled by definition and takes the value as given.
    """
    lr = schedule_from(train, steps_per_epoch)
    wd = train.weight_decay or None
    if train.optimizer == "sgd":
        opt = keras.optimizers.SGD(lr, momentum=train.momentum, nesterov=train.nesterov,
                                   weight_decay=wd / (1.0 - train.momentum) if wd else None)
    else:
        opt = keras.optimizers.AdamW(lr, weight_decay=wd or 0.0)
    if wd:
        opt.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
    return opt


def make_loss(train):
    # Keras' smoothing gives y*(1-eps) + eps/K (Szegedy et al.); targets still sum to 1.
    return keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing)


def make_metrics(num_classes):
    metrics = [keras.metrics.CategoricalAccuracy(name="top1")]
    if num_classes > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"))
    return metrics
