"""Time-budgeted training: the whole command (data, training, final evaluation with TTA, exports,
report) ends inside `train.budget_minutes` on whatever machine runs it.

After a short warm-up the run times its own steps and validation, estimates what must still
happen after training, and plans the number of steps; the learning-rate schedule then spans
exactly the planned steps. At every epoch end it plans again from the speed it measured over that
epoch (a slower or busier machine gets fewer steps, not a broken promise), and it stops at once
if the end of training would cross into the time reserved for the final steps.

Every reading of the time goes through the budget's `clock` (time.time unless one is injected), so
the whole plan can be tested on a fake clock: the engine, the final steps and the closing record
all read it.
"""
import time

from kclassify.errors import RecipeError

WARMUP_STEPS = 2  # traced and run before timing (the first calls compile)
TIMED_STEPS = 6  # timed for the first plan (at least this many, or 10 seconds' worth)
EXPORT_SECONDS = 20.0  # conversion and set-up of one .tflite export, before its evaluation
REPORT_SECONDS = 10.0  # model.keras, plots, report.html


class Budget:
    def __init__(self, minutes, started, val_images, eval_views, exports, calibration_images, clock=time.time):
        self.clock = clock
        self.minutes = float(minutes)
        self.started = started
        self.deadline = started + 60.0 * self.minutes
        self.margin = 5.0 + 0.02 * 60.0 * self.minutes
        self.val_images, self.eval_views = val_images, eval_views
        self.tta_fraction = 1.0  # the share of the validation images that get the test-time views
        self.exports, self.calibration = list(exports), calibration_images
        self.seconds_per_step = None
        self.seconds_per_image = None  # the final network's inference, measured on validation batches
        self.seconds_per_tta_image = 0.0  # the same with every test-time view
        self.step_when_timed = None  # seconds_per_step when inference was timed
        self.val_seconds = 0.0  # one validation pass while training
        self.compile_seconds = 0.0  # the final networks' first calls (JAX compiles each new network once)
        self.ckpt_seconds = 0.0  # one checkpoint save
        self.replans = 0
        self._warmup = None  # (clock, step) when the warm-up steps were done

    def timed(self, fn):
        """(fn(), seconds it took) on the budget's clock."""
        t = self.clock()
        out = fn()
        return out, self.clock() - t

    def time_first_steps(self, local, step_cost):
        """Called after each step until the first plan: True once `seconds_per_step` is measured
        (WARMUP_STEPS traced and run, then at least TIMED_STEPS timed, or 10 seconds' worth, up to 4x
        that many). `step_cost(first, last)` is what those steps cost in full-size steps."""
        if local == WARMUP_STEPS:
            self._warmup = (self.clock(), local)
            return False
        if local < WARMUP_STEPS + TIMED_STEPS:
            return False
        t0, l0 = self._warmup
        if self.clock() - t0 < 10.0 and local < WARMUP_STEPS + 4 * TIMED_STEPS:
            return False
        self.seconds_per_step = (self.clock() - t0) / step_cost(l0, local)
        return True

    def final_seconds(self):
        """What still happens after the last training step: evaluation (plain and every TTA view),
        each export (conversion, calibration, its LiteRT measurement), the report. Inference was
        timed once; a machine that has since become busier (slower steps) evaluates slower too."""
        load = self.load()
        per_image = (self.seconds_per_image or 0.002) * load
        per_tta = (self.seconds_per_tta_image * load) or (self.eval_views * per_image)
        evaluate = self.val_images * (per_image + (self.tta_fraction * per_tta if self.eval_views else 0.0))
        exports = sum(EXPORT_SECONDS + (self.calibration + 2 * self.val_images) * per_image for _ in self.exports)
        return 1.1 * evaluate + exports + REPORT_SECONDS + self.ckpt_seconds + self.compile_seconds

    def inference_timed(self, per_image, per_tta_image):
        self.seconds_per_image, self.seconds_per_tta_image = per_image, per_tta_image
        self.step_when_timed = self.seconds_per_step

    def load(self):
        """How much slower a step is now than when inference was timed; never below 1 (a full-size
        step estimated from low-resolution ones can read slow early, and the measured reserve holds)."""
        if not self.step_when_timed or not self.seconds_per_step:
            return 1.0
        return max(self.seconds_per_step / self.step_when_timed, 1.0)

    def plan(self, steps_done, steps_per_epoch, val_every, cap, checkpoints_per_epoch=1.0, low_res=None):
        """(total steps of training that fit, how many of them train at low resolution): training,
        its validations and checkpoints, then the final steps, all before the deadline less a safety
        margin. `seconds_per_step` is a full-size step's; `low_res` (fraction, cost), while training
        is still in its low-resolution part: that share of all the steps costs `cost` of a step each."""
        left = max(self.deadline - self.clock() - self.margin - self.final_seconds(), 0.0)
        per_epoch = (self.val_seconds / val_every if val_every else 0.0) + self.ckpt_seconds * checkpoints_per_epoch
        overhead = per_epoch / steps_per_epoch
        full = self.seconds_per_step + overhead
        self.replans += 1
        total = steps_done + int(left / full)
        if low_res is not None:
            fraction, cost = low_res
            low = cost * self.seconds_per_step + overhead
            # low x (fraction T - done) + full x (1 - fraction) T = left, while fraction T > done
            # (which holds exactly when it also holds for the plain plan's T)
            t = (left + low * steps_done) / (low * fraction + full * (1.0 - fraction))
            total = int(t) if fraction * t > steps_done else total
        total = max(min(total, cap), steps_done)
        low_steps = min(max(steps_done, int(round(low_res[0] * total))), total) if low_res else steps_done
        return total, low_steps

    def out_of_time(self):
        return self.clock() + self.final_seconds() + self.margin >= self.deadline

    def record(self, total_steps, steps_done):
        return {"budget_minutes": self.minutes, "planned_steps": int(total_steps), "steps_done": int(steps_done),
                "seconds_per_step": round(self.seconds_per_step or 0.0, 4),
                "inference_ms_per_image": round(1e3 * (self.seconds_per_image or 0.0), 3),
                "tta_ms_per_image": round(1e3 * self.seconds_per_tta_image, 3),
                "load_since_inference_timed": round(self.load(), 2),
                "reserved_final_seconds": round(self.final_seconds(), 1), "margin_seconds": round(self.margin, 1),
                "replans": self.replans,
                "planned_wall_seconds": round(60.0 * self.minutes - self.margin, 1)}


def check_budget_recipe(recipe, command):
    """Recipe fields a budgeted (or multi-worker) run cannot honour are refused by name."""
    t = recipe.train
    if recipe.runtime.strategy == "multi_worker":
        # Each worker would plan (or recover) on its own and the collectives would wait forever.
        for name, value in (("budget_minutes", t.budget_minutes), ("recovery_trials", t.recovery_trials)):
            if value:
                raise RecipeError(f"train.{name} is not supported with runtime.strategy multi_worker yet")
    if t.budget_minutes is None:
        return
    if command != "fit":
        raise RecipeError(f"train.budget_minutes is not supported by kclassify {command}: its phases set the epochs")
    if t.step_milestones:
        raise RecipeError("train.step_milestones are epochs of a fixed schedule; a budgeted run does not know its "
                          "epochs in advance: use train.schedule cosine or onecycle with train.budget_minutes")
    if t.warmup_epochs:
        raise RecipeError("train.warmup_epochs with train.budget_minutes: give train.warmup_fraction instead "
                          "(a fraction of the planned steps)")
    if t.average is not None and t.average.kind == "swa":
        raise RecipeError("train.average.kind swa averages from a fixed epoch: not supported with train.budget_minutes")


def close(metrics, state, budget, started, finishing, parts, echo, clock=time.time):
    """The plan and the command's wall time into `metrics`; for a budgeted run the promise kept (or
    not), with what the final steps took (each part's seconds) against the time the plan kept."""
    now = clock()
    if budget is not None:
        metrics["budget"] = {**state["plan"], **budget.record(state["plan"]["total_steps"], state["step"]),
                             "final_seconds": round(now - finishing, 1), "final_parts": parts}
    if started is None:
        return
    metrics["wall_seconds"] = round(now - started, 1)
    if budget is None:
        return
    b = metrics["budget"]
    b.update(actual_wall_seconds=metrics["wall_seconds"], training_ended_seconds=round(finishing - started, 1))
    echo(f"budget: {budget.minutes:g} min ({60 * budget.minutes:.0f} s); the command took {metrics['wall_seconds']:.0f} s")
    if metrics["wall_seconds"] > 60 * budget.minutes:
        # Say where the time went: a stall (a busy or swapping machine) shows as one part far over.
        took = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
        echo(f"budget: over by {metrics['wall_seconds'] - 60 * budget.minutes:.1f} s; training ended at "
             f"{b['training_ended_seconds']:.0f} s and the final steps took {b['final_seconds']:.1f} s ({took}) "
             f"against {b['reserved_final_seconds']:.1f} s kept and a {b['margin_seconds']:.1f} s margin")
