"""The training engine: one loop for `kclassify fit` (one phase) and `kclassify finetune` (several).

A phase is one optimizer: it sets which layers train, builds the optimizer and its schedule, and
runs its steps. Inside a phase the loop may switch segments (MixUp/CutMix off for the last epochs,
the whitening stem's bias frozen after its first epochs), which rebuilds the data stream or the
compiled step. Every catalogue feature (weight averaging, distillation, mixing segments, the steps
cap, the DropBlock schedule, TensorBoard, the time budget, checkpoints, recovery) lives here once;
what differs between TensorFlow and JAX (the compiled step, the training stream, the weight
averages' update) comes from train/backends.py.

Steps are counted globally (across phases): the data stream is a function of the global step, so a
resume at any checkpoint continues with the data order it would have had.
"""
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np
from keras.layers import InputSpec

from kclassify.augment.device import check_device_recipe
from kclassify.data.batching import eval_batch_size, eval_batches, steps_per_epoch
from kclassify.data.splits import resolve_count
from kclassify.errors import RecipeError, TrainingDiverged
from kclassify.inference import predictor, Predictor
from kclassify.layers.whitening import set_whitening_bias_trainable
from kclassify.metrics import cross_entropy, top_k
from kclassify.models import as_float32
from kclassify.models.saving import load_model
from kclassify.runtime import augment_on_device, tensorflow_installed
from kclassify.train import backends
from kclassify.train import budget as budgets
from kclassify.train.averaging import load_arrays, WeightAverage
from kclassify.train.distill import distillation_model, DistillationLoss, student_metrics
from kclassify.train.dropblock_schedule import dropblock_layers, DropBlockSchedule
from kclassify.train.progress import EpochProgress
from kclassify.train.optim import make_loss, make_metrics, make_optimizer
from kclassify.tta import tta_model, view_count, views_of


@dataclass
class Phase:
    name: str
    train: object  # the TrainConfig of this phase's optimizer (lr, schedule, epochs)
    epochs: int
    setup: Callable = None  # setup(model) sets layer.trainable; returns [(variable, lr multiplier)]
    tags: dict = field(default_factory=dict)  # extra history columns, e.g. the fine-tuning phase


class Rewind(Exception):
    """Training goes back to a checkpoint (recovery after a divergence)."""


class Engine:
    def __init__(self, recipe, run, data, model, strategy, echo=print, callbacks=(), started=None, teacher=None,
                 data_filter=None, clock=time.time):
        self.recipe, self.run, self.data, self.model, self.strategy = recipe, run, data, model, strategy
        self.echo = echo if run.chief else (lambda *a, **k: None)
        self.echo_every_worker = echo  # the resume point: each worker says where it restarts
        self.user_callbacks = list(callbacks)
        self.teacher = teacher
        self.data_filter = data_filter  # train/data_filter.py: the proxy that picks each batch's kept images
        self.k = len(data.class_names)
        self.augment_on_device = augment_on_device(recipe.runtime.augment_on)
        if backends.numpy_fed(recipe):
            check_device_recipe(recipe)
        if self.augment_on_device:
            self.echo("augmentation: inside the train step (runtime.augment_on); the input stream gathers uint8 batches")
        t = recipe.train
        self.batch = min(t.batch_size, len(data.train))
        self.worker = backends.worker_of(strategy)
        self.spe = steps_per_epoch(data.train, self.batch, t.steps_per_epoch, self.worker[1])
        check_batch_splits(self.batch)
        self.val_batches = eval_batches(data.val, recipe.evaluate.batch_size)
        self.predict = predictor(model)
        self.clock = clock  # every reading of the time (a budget is tested on a fake clock)
        self.started = started or clock()
        self.budget = None
        if t.budget_minutes:
            calibration = resolve_count(recipe.output.calibration_images, self.k, len(data.train))
            exports = recipe.output.export if tensorflow_installed() else []  # skipped without it (commands/finish.py)
            self.budget = budgets.Budget(t.budget_minutes, self.started, len(data.val),
                                         view_count(recipe.evaluate), exports, calibration, clock)
            self.budget.tta_fraction = recipe.evaluate.tta_fraction
        self.averager = self._averager()
        self.progress = EpochProgress(self.spe, self.batch, clock, recipe.runtime.verbose, self.echo,
                                      self.budget)
        self.phase_total = None
        self.low_res = low_res_shape(t.low_res, data.train.image_shape)  # (h, w, cost of a step) or None
        self.small_input_networks = ()  # what takes the small batches: the model, and the proxy that ranks them
        if self.low_res:
            named = [(recipe.model.name, model)]
            if data_filter is not None:
                named.append(("the data filter's proxy", data_filter.proxy))
            for name, network in named:
                check_any_size(network, name, self.low_res[:2])
            self.small_input_networks = tuple(network for _, network in named)

    # ------------------------------------------------------------------ set-up

    def _averager(self):
        avg = self.recipe.train.average
        if avg is None:
            return None

        with self.strategy.scope():
            return WeightAverage(avg, self.model, progress=self._progress)

    def _progress(self):
        s = self.run.state
        return s["phase_step"] / max(self.phase_total or 1, 1)

    def _compile(self, phase, multipliers, total_steps):
        """(trainer, optimizer): the model (or the model beside its frozen teacher) compiled with
        a fresh optimizer whose schedule spans `total_steps`."""
        with self.strategy.scope():
            trainer, loss, metrics = self.model, make_loss(phase.train), make_metrics(self.k)
            if self.teacher is not None:
                d = self.recipe.train.distill
                trainer = distillation_model(self.model, load_model(self.teacher), self.teacher)
                loss, metrics = DistillationLoss(self.k, d.alpha, d.temperature), student_metrics(self.k)
            opt = make_optimizer(phase.train, self.spe, self.model, multipliers, total_steps)
            trainer.compile(optimizer=opt, loss=loss, metrics=metrics)
            opt.build(trainer.trainable_variables)
            if self.data_filter is not None:
                self.data_filter.compile(phase.train, phase.setup, self.spe, opt._learning_rate, opt.iterations,
                                         total_steps)
        return trainer, opt

    def _callbacks(self, trainer):
        cbs = list(self.user_callbacks)
        if self.averager is not None:
            cbs.insert(0, self.averager)
        if self.recipe.output.tensorboard and self.run.chief:
            cbs.append(keras.callbacks.TensorBoard(str(self.run.dir / "logs"), update_freq="epoch", write_graph=False))

        if dropblock_layers(self.model):
            cbs.append(DropBlockSchedule(by="step", epochs=self.total_epochs, steps_per_epoch=self.spe))
        return keras.callbacks.CallbackList(cbs, model=trainer, add_history=False, add_progbar=False)

    # ------------------------------------------------------------------ running

    def fit(self, phases):
        """Run the phases from the run's state; returns the state."""
        self.phases = phases
        self.total_epochs = sum(p.epochs for p in phases)
        per_replica = max(1, self.batch // self.strategy.num_replicas_in_sync)
        with backends.routed_gradients(self.model, per_replica, self.recipe.runtime.conv_filter_grad, self.echo):
            while True:
                try:
                    self._run_phases()
                    break
                except Rewind:
                    attach_state(self.trainer)  # JAX: the abandoned steps' state, before the checkpoint replaces it
                    continue
        self.run.state["done"] = True
        self.run.commit()
        return self.run.state

    def _run_phases(self):
        s = self.run.state
        restore = self._resume_point()
        first = 0
        for i, phase in enumerate(self.phases):
            if i < s["phase"]:
                first += phase.epochs * self.spe
                continue
            self._run_phase(i, phase, first, restore if restore and restore["phase"] == i else None,
                            restore if restore and restore["phase"] < i else None)
            restore = None
            first += phase.epochs * self.spe
            if i + 1 < len(self.phases):
                s.update(phase=i + 1, phase_step=0)

    def _resume_point(self):
        """The newest whole checkpoint of the state (falling back past corrupt ones), or None."""
        s = self.run.state
        if not s["checkpoints"]:
            return None
        good = self.run.good_checkpoints(self.echo)
        if not good:
            raise RecipeError(f"no usable checkpoint in {self.run.dir / 'ckpt'}: start over with --fresh")
        entry = good[0]
        if entry["file"] != s["checkpoints"][-1]["file"]:
            self.echo(f"resuming from the older checkpoint {entry['file']} (step {entry['step']})")
        self.run.rewind(entry)
        return entry

    def _run_phase(self, index, phase, first_step, same_phase, earlier):
        s = self.run.state
        multipliers = phase.setup(self.model) if phase.setup else []
        total = self._planned_total(phase)
        trainer, opt = self._compile(phase, multipliers, total)
        if earlier is not None:
            self._load_weights_only(earlier)
        if same_phase is not None:
            self._load_checkpoint(trainer, same_phase)
        opt.learning_rate  # noqa: B018  (built)
        schedule = opt._learning_rate
        schedule.set(scale=s["lr_scale"])
        self.phase_total = total
        if s["phase_step"]:
            self.echo_every_worker(f"resuming {self.run.dir} at step {s['step']} (epoch {s['epoch']}, phase {index + 1}; "
                      f"optimizer step {int(opt.iterations.numpy())}, lr {float(schedule(opt.iterations)):.5f})")
        callbacks = self._callbacks(trainer)
        self.trainer = trainer
        self._loop(index, phase, trainer, opt, schedule, callbacks, first_step)

    def _planned_total(self, phase):
        s = self.run.state
        cap = phase.epochs * self.spe
        if self.budget is not None and s.get("plan"):
            return int(s["plan"]["total_steps"])
        return cap

    def _load_checkpoint(self, trainer, entry):
        trainer.load_weights(self.run.dir / "ckpt" / entry["file"])
        self._restore_extras(entry)

    def _restore_extras(self, entry):
        """The weight averages and the data filter's proxy, kept beside the checkpoint in one file
        (named `averages` in the state since averaging was its first use)."""
        if not entry.get("averages") or (self.averager is None and self.data_filter is None):
            return

        arrays = load_arrays(self.run.dir / "ckpt" / entry["averages"])
        if self.averager is not None:
            self.averager.restore(arrays)
        if self.data_filter is not None and not self.data_filter.restore(arrays):
            self.echo("data filter: the checkpoint has no proxy; a fresh one ranks from here")

    def _load_weights_only(self, entry):
        """A checkpoint of an earlier phase: its weights, not its optimizer (each phase has its own)."""
        saved = keras.models.load_model(self.run.dir / "ckpt" / entry["file"], compile=False)
        source = saved if self.teacher is None else saved.get_layer(self.model.name)
        self.model.set_weights(source.get_weights())
        self._restore_extras(entry)

    # ------------------------------------------------------------------ the loop

    def _stream(self, global_step, mix):
        return backends.train_stream(self.recipe, self.data.train, self.k, self.strategy, self.batch, self.spe,
                                     global_step, mix, self.worker, raw=self.augment_on_device)

    def _low_res_steps(self):
        """Steps of this phase at train.low_res's size: its fraction of the planned steps, or what
        the plan fixed once the full size began (a replan must not send training back to it)."""
        if self.low_res is None:
            return 0
        plan = self.run.state.get("plan") or {}
        if "low_res_steps" in plan:
            return int(plan["low_res_steps"])
        return int(round(self.recipe.train.low_res.fraction * self.phase_total))

    def _step_cost(self, first, last):
        """Steps first..last-1 of this phase in full-size steps (a low_res step costs less)."""
        low = max(0, min(last, self._low_res_steps()) - first)
        return (last - first - low) + low * (self.low_res[2] if self.low_res else 1.0)

    def _loop(self, index, phase, trainer, opt, schedule, callbacks, first_step):
        s = self.run.state
        out = self.recipe.output
        segment = iterator = train_fn = None
        callbacks.on_train_begin()
        epoch_start, new_epoch = self.clock(), True  # a resume mid-epoch begins its epoch too
        while s["phase_step"] < self.phase_total:
            local, step = s["phase_step"], s["step"]
            want = segment_at(self.recipe.augment, self.recipe.train, self.spe, self.phase_total, local,
                              self._low_res_steps())
            if want != segment:
                if segment is None or want[0] != segment[0]:
                    iterator = self._stream(first_step + local, want[0])
                # the step holds the whitening bias's trainability, the input size and, preparing batches
                # on the device, the mixer
                if segment is None or want[1:] != segment[1:] or (self.augment_on_device and want[0] != segment[0]):
                    attach_state(trainer)
                    set_whitening_bias_trainable(self.model, want[1])
                    if segment is not None and segment[2] and not want[2]:
                        self.echo(f"low_res: step {local + 1} on trains at the data's size")
                    train_fn = self._train_function(trainer, want)
                segment = want
            if new_epoch or step % self.spe == 0:
                attach_state(trainer)
                trainer.reset_metrics()
                callbacks.on_epoch_begin(step // self.spe)
                epoch_start, new_epoch = self.clock(), False
                self.progress.start(step // self.spe, self.total_epochs, step % self.spe)
            callbacks.on_train_batch_begin(step % self.spe)
            if segment[2]:
                with any_input_size(trainer, *self.small_input_networks):
                    logs = train_fn(iterator)
            else:
                logs = train_fn(iterator)
            s["phase_step"], s["step"] = local + 1, step + 1
            callbacks.on_train_batch_end(step % self.spe, logs)
            self.progress.update(step % self.spe + 1, logs)
            self._maybe_plan(local + 1, schedule)
            end_of_epoch = s["step"] % self.spe == 0 or s["phase_step"] >= self.phase_total
            if s["step"] % (out.log_every_steps or 10) == 0 or end_of_epoch:
                self._check_loss(logs, index)
                if out.log_every_steps and s["step"] % out.log_every_steps == 0:
                    self._log_step(logs, schedule, opt)
            if not end_of_epoch and self._out_of_time(schedule):
                end_of_epoch = True
            if end_of_epoch:
                self.progress.end()
                attach_state(trainer)
                self._end_epoch(trainer, opt, schedule, callbacks, logs, phase, self.clock() - epoch_start)
            elif out.checkpoint_every_steps and s["step"] % out.checkpoint_every_steps == 0:
                attach_state(trainer)
                s["train_seconds"] += self.clock() - epoch_start
                self._checkpoint(trainer)
                epoch_start = self.clock()
        attach_state(trainer)
        callbacks.on_train_end()

    def _train_function(self, trainer, segment):
        mix, _, low = segment
        return backends.train_function(trainer, self.strategy, self.recipe, self.data.train, self.k, mix,
                                       raw=self.augment_on_device, data_filter=self.data_filter,
                                       resize=self.low_res[:2] if low else None)

    def _out_of_time(self, schedule):
        """A budgeted run whose time for training is up ends here (its last, partial epoch)."""
        s = self.run.state
        if self.budget is None or not s.get("plan") or not self.budget.out_of_time():
            return False
        attach_state(self.trainer)
        self.echo(f"budget: stopping at step {s['step']} to leave time for the final evaluation and exports")
        self.phase_total = s["phase_step"]
        schedule.set(total_steps=self.phase_total)
        s["plan"]["total_steps"] = self.phase_total
        return True

    def _maybe_plan(self, local, schedule):
        """The first plan of a budgeted run, once the warm-up steps are timed."""
        b, s = self.budget, self.run.state
        if b is None or s.get("plan") or not b.time_first_steps(local, self._step_cost):
            return
        attach_state(self.trainer)
        self._time_inference()
        self._replan(schedule, first=True)

    def _time_inference(self):
        b = self.budget
        batch = self._first_val_batch()
        b.val_seconds = self._seconds_per_image(self.predict.batch, batch) * len(self.data.val)
        b.inference_timed(*self._time_final_evaluation(batch))

    def _first_val_batch(self):
        return np.asarray(next(iter(self.val_batches)))

    def _time_final_evaluation(self, batch):
        """Seconds an image for the final report, timed on the network it will run: the float32
        copy a mixed-precision run saves (on a bf16 CPU path 2-3x slower than the training
        precision: a 30-minute run's 35,000 evaluated images once took 92 s against 30 s planned),
        plainly and with the recipe's test-time views."""
        ev = self.recipe.evaluate
        self.budget.compile_seconds = 0.0
        final = as_float32(self.model)  # the model itself when it trains in float32
        plain = self._seconds_per_image((self.predict if final is self.model else Predictor(final)).batch, batch,
                                        final is not self.model)
        if not view_count(ev):
            return plain, 0.0
        tta = Predictor(tta_model(final, views_of(ev), ev.average)).batch
        size = eval_batch_size(self.data.val.image_shape, view_count(ev), ev.batch_size)  # the report's batch
        return plain, self._seconds_per_image(tta, batch[:size], True)

    def _seconds_per_image(self, fn, batch, compiled_again=False):
        """One traced call, then one timed. `compiled_again`: the final evaluation builds this
        network anew, so its first call (a compile on JAX) is kept for the budget too."""
        _, first = self.budget.timed(lambda: fn(batch))
        _, seconds = self.budget.timed(lambda: fn(batch))
        if compiled_again:
            self.budget.compile_seconds += max(first - seconds, 0.0)
        return seconds / int(batch.shape[0])

    def _replan(self, schedule, first=False):
        s, b, t = self.run.state, self.budget, self.recipe.train
        per_epoch = 1.0 + (self.spe / self.recipe.output.checkpoint_every_steps
                           if self.recipe.output.checkpoint_every_steps else 0.0)
        cap = t.epochs * self.spe
        done, low_before = s["phase_step"], self._low_res_steps()
        low = None
        if self.low_res is not None and done < low_before:
            low = (t.low_res.fraction, self.low_res[2])
        total, low_steps = b.plan(done, self.spe, t.val_every, cap, per_epoch, low)
        self.phase_total = total
        self.total_epochs = self.progress.total = math.ceil(total / self.spe)
        schedule.set(total_steps=total)
        s["plan"] = b.record(total, s["phase_step"])
        s["plan"]["total_steps"] = total
        if self.low_res is not None:
            s["plan"]["low_res_steps"] = low_steps if low is not None else low_before
        if first:
            low = (f" (the first {s['plan']['low_res_steps']} at {self.low_res[0]}x{self.low_res[1]})"
                   if self.low_res else "")
            self.echo(f"budget: {b.minutes:g} min; {1.0 / b.seconds_per_step:.2f} steps/s measured (full size); planned "
                      f"{total} steps ({total / self.spe:.2f} epochs){low}, {b.final_seconds():.0f} s kept for the "
                      "final evaluation and exports")

    def _check_loss(self, logs, index):
        t = self.recipe.train
        loss = float(logs["loss"])
        bad = not math.isfinite(loss) or (t.loss_upper_bound is not None and loss > t.loss_upper_bound)
        if not bad:
            return
        s = self.run.state
        used = len(s["recoveries"])
        where = f"epoch {s['step'] // self.spe + 1}, step {s['step']}" + (f" (phase {index + 1})" if len(self.phases) > 1 else "")
        good = self.run.good_checkpoints(self.echo) if s["checkpoints"] else []
        if used >= t.recovery_trials or not good:
            kept = f"the last good checkpoint ({good[0]['file']}, epoch {good[0]['epoch']}) is kept in {self.run.dir / 'ckpt'}" \
                if good else "no checkpoint was written yet"
            raise TrainingDiverged(f"loss became {loss} at {where}; training stopped" +
                                   (f" after {used} recoveries" if used else "") + f". {kept}. "
                                   "Lower train.lr, raise the warmup or set train.recovery_trials.")
        s["lr_scale"] = s["lr_scale"] * 0.5
        s["recoveries"].append({"at_step": s["step"], "loss": loss, "back_to_step": good[0]["step"],
                                "lr_scale": s["lr_scale"]})
        self.echo(f"loss became {loss} at {where}: back to step {good[0]['step']} with the learning rate halved "
                  f"(x{s['lr_scale']:g}; recovery {used + 1} of {t.recovery_trials})")
        self.run.rewind(good[0])
        self.run.commit()
        raise Rewind()

    def _validate(self):
        probs = self.predict(self.val_batches)
        labels = self.data.val.labels
        out = {"val_loss": cross_entropy(probs, labels), "val_top1": top_k(probs, labels, 1)}
        if self.k > 5:
            out["val_top5"] = top_k(probs, labels, 5)
        return out

    def _end_epoch(self, trainer, opt, schedule, callbacks, logs, phase, seconds):
        s, t = self.run.state, self.recipe.train
        epoch = math.ceil(s["step"] / self.spe) - 1
        row = {"epoch": epoch, "step": s["step"], **{k: float(v) for k, v in logs.items()}}
        rate = round(self.progress.images_per_second(s["step"] - epoch * self.spe), 1)  # before validation
        last = s["phase_step"] >= self.phase_total and s["phase"] == len(self.phases) - 1
        if (t.val_every and (epoch + 1) % t.val_every == 0) or last:
            val_time = self.clock()
            row.update(self._validate())
            if self.budget is not None:
                self.budget.val_seconds = self.clock() - val_time
        row.update(lr=float(schedule(opt.iterations)), seconds=round(seconds, 2), images_per_s=rate, **phase.tags)
        # Keras callbacks (TensorBoard) take numbers only; the phase's text tags stay in the history.
        callbacks.on_epoch_end(epoch, {k: v for k, v in row.items() if not isinstance(v, str)})
        s["epoch"], s["train_seconds"] = epoch + 1, s["train_seconds"] + seconds
        s["history"] = [h for h in s["history"] if h["epoch"] != epoch] + [row]
        self._echo_epoch(row)
        ckpt_time = self.clock()
        self._checkpoint(trainer)
        if self.budget is not None:
            self.budget.ckpt_seconds = self.clock() - ckpt_time
            if s.get("plan") and s["phase_step"] < self.phase_total:
                self._timed_epoch(seconds)
                self._replan(schedule)

    def _timed_epoch(self, seconds):
        """Learn the speed of the epoch that just ended (its steps, without validation)."""
        steps = self.spe if self.run.state["step"] % self.spe == 0 else self.run.state["step"] % self.spe
        last = self.run.state["phase_step"]
        self.budget.seconds_per_step = seconds / max(self._step_cost(max(last - steps, 0), last), 1e-9)
        if self.budget.seconds_per_image is None:  # a resumed run keeps its plan but times inference again
            self._time_inference()

    def _checkpoint(self, trainer):
        arrays = {}
        for extra in (self.averager, self.data_filter):
            arrays.update(extra.arrays() if extra is not None else {})
        self.run.save_checkpoint(trainer, arrays or None, keep=self.recipe.output.keep_checkpoints)

    def _echo_epoch(self, row):
        shown = [f"{k} {row[k]:.4f}" for k in ("loss", "top1", "val_loss", "val_top1") if k in row]
        tag = f" [{row['unfreeze']}]" if "unfreeze" in row else ""
        self.echo(f"epoch {row['epoch'] + 1}/{self.total_epochs}{tag} step {row['step']} - {row['seconds']:.1f}s - "
                  + " - ".join(shown) + f" - lr {row['lr']:.5f} - {row['images_per_s']:.0f} images/s")

    def _log_step(self, logs, schedule, opt):
        if not self.run.chief:
            return
        attach_state(self.trainer)
        path = self.run.dir / "steps.csv"
        line = f"{self.run.state['step']},{float(logs['loss']):.7g},{float(schedule(opt.iterations - 1)):.7g}\n"
        if not path.exists():
            path.write_text("step,loss,lr\n")
        with open(path, "a") as f:
            f.write(line)


def segment_at(augment, train, steps_per_epoch, total, local, low_res_steps=0):
    """(MixUp/CutMix on, whitening bias trains, smaller images) at step `local` of a phase of
    `total` steps whose first `low_res_steps` train at train.low_res's size."""
    mixing = augment.mixup_alpha > 0 or augment.cutmix_alpha > 0
    mix = mixing and local < total - augment.mix_off_epochs * steps_per_epoch
    whiten = train.whiten_bias_epochs is None or local < train.whiten_bias_epochs * steps_per_epoch
    return mix, whiten, local < low_res_steps


def low_res_shape(low_res, image_shape):
    """(height, width, cost of a step against a full-size one) of train.low_res on images of
    `image_shape`: the longer side becomes low_res.size, the other in proportion; the cost is the
    pixel ratio, until epochs are timed (measured, airbench95 at batch 512 on a CPU: 24 of 32 px cost
    0.57-0.59 of a step, 0.5625 the pixels)."""
    if low_res is None:
        return None

    h, w = int(image_shape[0]), int(image_shape[1])
    if low_res.size >= max(h, w):
        raise RecipeError(f"train.low_res.size {low_res.size} must be below the images' longer side ({max(h, w)})")
    scale = low_res.size / max(h, w)
    lh, lw = max(1, round(h * scale)), max(1, round(w * scale))
    return lh, lw, (lh * lw) / (h * w)


def check_any_size(model, name, size):
    """train.low_res needs a network that takes smaller images (global pooling, no Flatten head)."""
    try:  # one image through the network: Keras' shape inference lets a Dense take the wrong width
        with any_input_size(model):
            model(np.zeros((1, *size, model.input_shape[-1]), np.float32), training=False)
    except Exception as err:  # noqa: BLE001  (Keras or TensorFlow says why: ValueError, InvalidArgumentError)
        raise RecipeError(f"train.low_res: model {name!r} cannot take {size[0]}x{size[1]} images "
                          f"({str(err).splitlines()[0][:200]})") from None


@contextlib.contextmanager
def any_input_size(*models):
    """Keras checks a functional model's input against its Input's shape; train.low_res's steps feed
    smaller images to networks that take any size, so the check is relaxed to rank and channels
    while they run (the saved model keeps its Input)."""
    held = []
    for model in dict.fromkeys(models):
        specs = model.input_spec
        held.append((model, getattr(model, "_manual_input_spec", None), hasattr(model, "_manual_input_spec")))
        model.input_spec = [InputSpec(shape=(None,) * (len(sp.shape) - 1) + (sp.shape[-1],), name=sp.name,
                                      allow_last_axis_squeeze=True) for sp in specs]
    try:
        yield
    finally:
        for model, spec, had in held:
            if had:
                model.input_spec = spec
            else:
                del model._manual_input_spec


def check_batch_splits(batch):
    """A keras.distribution (JAX, runtime.strategy mirrored) splits each batch evenly over its devices."""
    dist = keras.distribution.distribution()
    devices = len(dist.device_mesh.devices.flat) if dist is not None else 1
    if batch % devices:
        raise RecipeError(f"train.batch_size {batch} does not split over {devices} devices: use a multiple of {devices}")


def attach_state(trainer):
    """On JAX, put the state the compiled steps carry back into the variables before the loop reads
    or writes one between steps (train/jax_loop.py); nothing to do on TensorFlow."""
    sync = getattr(trainer, "jax_state_sync", None)
    if sync is not None:
        sync()
