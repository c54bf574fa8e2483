"""Learning-rate schedules as functions of the optimizer's step counter. The counter is saved
with every checkpoint, so a resumed run continues with exactly the learning rate it stopped at.

A time-budgeted run learns its number of steps only after it has measured its own speed, and a
recovery halves the rate: `adjustable()` gives a schedule two variables (total steps, scale) that
the engine sets without retracing the train step. Their values live in the run's state.
"""
import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kclassify")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from base_lr/warmup_steps to base_lr, then cosine, step or constant.

    kind="step": lr = base_lr * gamma ** (number of milestones passed), milestones in steps.
    kind="cosine": half a cosine from base_lr down to min_lr at total_steps.
    kind="onecycle": after the warmup ramp, a straight line down to min_lr at total_steps
    (Smith's one-cycle, as in fast CIFAR training; the ramp up is the warmup).
    """

    def __init__(self, base_lr, total_steps, warmup_steps=0, kind="cosine", milestones=(), gamma=0.1, min_lr=0.0,
                 hold_from=None, hold_lr=None, hold_cycle=0, hold_min_lr=0.0, warmup_fraction=None, warmup_start=0.0):
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_fraction = None if warmup_fraction is None else float(warmup_fraction)
        self.warmup_start = float(warmup_start)  # lr at step 0 as a fraction of base_lr (airbench: 0.2)
        self._total = self._scale = None
        self.kind = kind
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.min_lr = float(min_lr)
        self.hold_from = None if hold_from is None else int(hold_from)  # SWA: constant lr from this step
        self.hold_lr = None if hold_lr is None else float(hold_lr)
        self.hold_cycle, self.hold_min_lr = int(hold_cycle), float(hold_min_lr)  # SWA's cyclic rate

    def adjustable(self, optimizer=None):
        """Attach the variables that a budget plan (total steps) and a recovery (scale) set. On
        TensorFlow the compiled step reads them by reference; on JAX a step sees only its state, so
        they are variables of the `optimizer` (whose state each step carries)."""
        if self._total is None:
            if optimizer is None or keras.backend.backend() == "tensorflow":
                import tensorflow as tf  # here, so the schedule (and optim.py) import on any Keras backend

                self._total = tf.Variable(float(self.total_steps), trainable=False, dtype=tf.float32)
                self._scale = tf.Variable(1.0, trainable=False, dtype=tf.float32)
            else:
                self._total = optimizer.add_variable((), keras.initializers.Constant(float(self.total_steps)),
                                                     "float32", name="schedule_total_steps")
                self._scale = optimizer.add_variable((), "ones", "float32", name="schedule_scale")
        return self

    def set(self, total_steps=None, scale=None):
        if total_steps is not None:
            self.total_steps = int(total_steps)
            self._total.assign(float(total_steps))
        if scale is not None:
            self._scale.assign(float(scale))

    def _spans(self):
        total = self._total if self._total is not None else float(self.total_steps)
        if self.warmup_fraction is not None:
            return total, ops.floor(total * self.warmup_fraction)
        return total, float(self.warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        total, warmup = self._spans()
        if self.kind == "cosine":
            span = ops.maximum(total - warmup, 1.0)
            progress = ops.clip((step - warmup) / span, 0.0, 1.0)
            lr = self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.kind == "onecycle":
            span = ops.maximum(total - warmup, 1.0)
            progress = ops.clip((step - warmup) / span, 0.0, 1.0)
            lr = self.base_lr + (self.min_lr - self.base_lr) * progress
        elif self.kind == "step":
            passed = sum(ops.cast(step >= m, "float32") for m in self.milestones) if self.milestones else 0.0
            lr = self.base_lr * ops.power(self.gamma, passed)
        else:
            lr = ops.convert_to_tensor(self.base_lr, "float32")
        if self.warmup_steps or self.warmup_fraction:
            frac = (step + 1.0) / ops.maximum(warmup, 1.0)
            warm = self.base_lr * (self.warmup_start + (1.0 - self.warmup_start) * frac)
            lr = ops.where(step < warmup, warm, lr)
        if self.hold_from is not None:
            held = ops.convert_to_tensor(self.hold_lr, "float32")
            if self.hold_cycle > 1:
                phase = ops.mod(ops.maximum(step - self.hold_from, 0.0), self.hold_cycle) / (self.hold_cycle - 1)
                held = self.hold_lr + (self.hold_min_lr - self.hold_lr) * ops.minimum(phase, 1.0)
            lr = ops.where(step >= self.hold_from, held, lr)
        return lr * self._scale if self._scale is not None else lr

    def get_config(self):
        return dict(base_lr=self.base_lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    kind=self.kind, milestones=self.milestones, gamma=self.gamma, min_lr=self.min_lr,
                    hold_from=self.hold_from, hold_lr=self.hold_lr, hold_cycle=self.hold_cycle,
                    hold_min_lr=self.hold_min_lr, warmup_fraction=self.warmup_fraction, warmup_start=self.warmup_start)


def schedule_from(train, steps_per_epoch, total_steps=None):
    """The WarmupSchedule a TrainConfig asks for (epochs converted to steps; `total_steps`, when
    given, is a plan's count instead of epochs x steps_per_epoch)."""
    return WarmupSchedule(
        base_lr=train.effective_lr(),
        total_steps=total_steps or train.epochs * steps_per_epoch,
        warmup_steps=round(train.warmup_epochs * steps_per_epoch),
        warmup_fraction=train.warmup_fraction,
        warmup_start=train.warmup_start,
        kind=train.schedule,
        milestones=[round(m * steps_per_epoch) for m in train.step_milestones],
        gamma=train.step_gamma,
        min_lr=train.min_lr,
        **_swa_hold(train, steps_per_epoch),
    )


def _swa_hold(train, steps_per_epoch):
    avg = train.average
    if avg is None or avg.kind != "swa" or avg.lr is None:
        return {}
    cycle = avg.cycle_epochs * steps_per_epoch if avg.cycle_epochs > 1 else 0
    return {"hold_from": avg.start_epoch * steps_per_epoch, "hold_lr": avg.lr, "hold_cycle": cycle,
            "hold_min_lr": avg.min_lr}
