"""Learning-rate schedules as functions of the optimizer's step counter. The counter is saved
with every checkpoint, so a resumed run continues with exactly the learning rate it stopped at."""
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
                 hold_from=None, hold_lr=None, hold_cycle=0, hold_min_lr=0.0):
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.min_lr = float(min_lr)
        self.hold_from = None if hold_from is None else int(hold_from)  # SWA: constant lr from this step
        self.hold_lr = None if hold_lr is None else float(hold_lr)
        self.hold_cycle, self.hold_min_lr = int(hold_cycle), float(hold_min_lr)  # SWA's cyclic rate

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.kind == "onecycle":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = self.base_lr + (self.min_lr - self.base_lr) * progress
        elif self.kind == "step":
            passed = sum(ops.cast(step >= m, "float32") for m in self.milestones) if self.milestones else 0.0
            lr = self.base_lr * ops.power(self.gamma, passed)
        else:
            lr = ops.convert_to_tensor(self.base_lr, "float32")
        if self.warmup_steps:
            warm = self.base_lr * (step + 1.0) / self.warmup_steps
            lr = ops.where(step < self.warmup_steps, warm, lr)
        if self.hold_from is not None:
            held = ops.convert_to_tensor(self.hold_lr, "float32")
            if self.hold_cycle > 1:
                phase = ops.mod(ops.maximum(step - self.hold_from, 0.0), self.hold_cycle) / (self.hold_cycle - 1)
                held = self.hold_lr + (self.hold_min_lr - self.hold_lr) * ops.minimum(phase, 1.0)
            lr = ops.where(step >= self.hold_from, held, lr)
        return lr

    def get_config(self):
        return dict(base_lr=self.base_lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    kind=self.kind, milestones=self.milestones, gamma=self.gamma, min_lr=self.min_lr,
                    hold_from=self.hold_from, hold_lr=self.hold_lr, hold_cycle=self.hold_cycle,
                    hold_min_lr=self.hold_min_lr)


def schedule_from(train, steps_per_epoch):
    """The WarmupSchedule a TrainConfig asks for (epochs converted to steps)."""
    return WarmupSchedule(
        base_lr=train.effective_lr(),
        total_steps=train.epochs * steps_per_epoch,
        warmup_steps=round(train.warmup_epochs * steps_per_epoch),
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
