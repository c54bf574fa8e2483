"""Keras 3 side of `kclassify qat` and `kclassify prune`: open the run (kclassify.run.Run), mark
which layers train as the fine-tuning's last phase had them, describe the model, write the job
(job.Job: every setting resolved here, from the recipe's qat section), run the tfmot worker in a
child process, then measure the .tflite exactly as `kclassify export` does (LiteRT top-1 on the
validation split, agreement and max probability difference against the Keras model).

`kclassify qat` also measures the post-training int8 file (model_int8.tflite, the export with the
same calibration images) on the same split and, by default, ships the one that agrees with the float
model on more validation images (no labels: the choice cannot fit them).

This process never imports tfmot or tf_keras and never sets TF_USE_LEGACY_KERAS: only the child's
environment carries it.
"""
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from kclassify.commands.export import ExportJob
from kclassify.commands.finetune import block_pattern
from kclassify.data.splits import take
from kclassify.errors import RecipeError
from kclassify.models import MODELS
from kclassify.qat import QATError, require_tfmot
from kclassify.qat.graph import write_model
from kclassify.qat.job import Augment, DataFiles, Job, ModelFiles, Pruning, Training
from kclassify.recipe import explain, QATConfig
from kclassify.run import Run
from kclassify.runtime import augment_on_device, NOISE
from kclassify.train.unfreeze import apply_phase


def _echo_default(*args):
    print(*args, flush=True)


class Prepared:
    """One run folder prepared for the worker: its recipe, settings, model (trainable flags as
    the fine-tuning's last phase set them), data and the export job that measures the files."""

    def __init__(self, run_dir, overrides, task, echo=_echo_default):
        require_tfmot()

        _, run = Run.resolve(run_dir)
        if run is None:
            raise QATError(f"{run_dir}: qat and prune need a run folder (model.keras with its recipe.yaml)")
        self.run, self.run_dir, self.task, self.echo = run, run.dir, task, echo
        self.recipe = run.recipe
        self.cfg = self.settings(overrides)  # bad options fail before TensorFlow loads anything

        self.model = run.load_model()

        self.data = run.data()  # QAT trains on what the run trained on
        self.phase = respect_last_phase(self.model, self.recipe)
        self.export_job = ExportJob(self.run_dir, model=self.model, data=self.data)  # Keras predicts once

    def settings(self, overrides):
        """The recipe's qat section with command-line overrides (None keeps the recipe's value)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "steps" in given or "epochs" in given:  # the command line's length wins over the recipe's
            given = {"steps": None, "epochs": None, **given}
        merged = {**self.recipe.qat.model_dump(), **given}
        try:
            return QATConfig.model_validate(merged)
        except ValidationError as exc:
            lines = ("  qat." + line.strip() for line in explain(exc).splitlines())
            raise RecipeError("invalid qat/prune option\n" + "\n".join(lines)) from None

    def training(self):
        """The worker's training settings (job.Training) and a line saying where each came from."""
        cfg, t = self.cfg, self.recipe.train
        batch = cfg.batch_size or t.trained_batch()  # the batch the run's rate was set for
        one_pass = max(1, math.ceil(len(self.data.train) / batch))
        if self.task == "prune":
            epochs, steps_per_epoch = cfg.epochs if cfg.epochs is not None else cfg.prune_epochs, cfg.steps_per_epoch
            lr, optimizer, lr_why = cfg.lr or cfg.prune_lr, "sgd", "qat.prune_lr" if cfg.lr is None else "set"
        else:
            epochs, steps_per_epoch = qat_steps(cfg, one_pass)
            optimizer = "sgd" if t.optimizer == "muon" else t.optimizer  # tf_keras has no Muon: its SGD half
            peak = last_peak_lr(self.recipe)
            lr = cfg.lr or cfg.lr_fraction * peak
            lr_why = "set" if cfg.lr else f"{cfg.lr_fraction:g} x the run's last peak rate {peak:g}"
            if t.optimizer == "muon":
                lr_why += "; the run trained its conv filters with Muon, which tf_keras lacks: SGD here"
        steps = epochs * (steps_per_epoch or one_pass)
        aug = self.recipe.augment
        training = Training(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch, optimizer=optimizer,
                            lr=float(lr), momentum=cfg.momentum if cfg.momentum is not None else t.momentum,
                            weight_decay=t.weight_decay if optimizer == "adamw" else 0.0,
                            freeze_bn=cfg.prune_freeze_bn if self.task == "prune" else cfg.freeze_bn,
                            calibration_batches=cfg.calibration_batches, range_log_every=cfg.range_log_every,
                            seed=self.recipe.runtime.seed,
                            augment=Augment(crop_pad=aug.crop_pad, pad_mode=aug.pad_mode, flip=bool(aug.flip),
                                            on_device=augment_on_device(self.recipe.runtime.augment_on)))
        why = f"{steps} steps ({epochs} x {steps_per_epoch or one_pass}), {optimizer} lr {lr:g} ({lr_why})"
        return training, why

    def write(self, folder):
        """The model description and data files every task needs: (ModelFiles, DataFiles)."""
        folder = Path(folder)
        export = self.export_job
        check = export.val_images[:self.cfg.check_images]
        files = write_model(self.model, folder / "model", check)
        train, val = self.data.train, self.data.val

        np.savez(folder / "train.npz", images=take(train, np.arange(len(train))), labels=np.asarray(train.labels))
        np.savez(folder / "val.npz", images=export.val_images, labels=np.asarray(val.labels))
        np.savez(folder / "calibration.npz", images=export.calibration)  # the post-training export's own
        return (ModelFiles(name=self.model.name, quantize=True, **files),
                DataFiles(train=str(folder / "train.npz"), val=str(folder / "val.npz"),
                          calibration=str(folder / "calibration.npz")))

    def measure(self, path, kind, worker, extra=None):
        """Embed the spec, measure with LiteRT, write <file>.json beside it (as `export` does);
        returns the report."""
        report = {"file": str(path), "kind": kind, "quant": kind, "class_names": self.data.class_names,
                  "source": str(self.run_dir), **(extra or {}), "worker": worker}
        return self.export_job.finish(path, Path(path).read_bytes(), report)


def respect_last_phase(model, recipe):
    """Set `trainable` as the fine-tuning's last phase had it (kclassify.train.unfreeze.apply_phase,
    the fine-tuning's own rule); returns a line saying so, or None for a `fit` run (all layers
    train, as they did)."""
    if recipe.model.name not in MODELS or MODELS.info(recipe.model.name).get("backbone") is None:
        return None

    ft = recipe.finetune
    if ft.mode == "knn":
        raise QATError("a knn fine-tuning run has no trained classifier to quantize-aware train")
    group = ft.phases[-1].unfreeze if ft.mode == "phases" and ft.phases else "head"
    unfrozen = apply_phase(model, group, block_pattern(recipe), ft.train_bn)
    return f"layers trained as in the fine-tuning's last phase (unfreeze {group}: {len(unfrozen)} backbone layers)"


def last_peak_lr(recipe):
    """The peak learning rate of the run's last phase (fine-tuning) or of its schedule (fit)."""
    ft = recipe.finetune
    if ft.mode == "phases" and ft.phases and ft.phases[-1].lr:
        return ft.phases[-1].lr
    return recipe.train.effective_lr()


def qat_steps(cfg, one_pass):
    """(epochs, steps per epoch or None) for QAT: --epochs as given, else qat.steps (default
    qat.settle_steps, enough for the activation ranges to settle) cut into passes."""
    if cfg.epochs is not None:
        return cfg.epochs, cfg.steps_per_epoch
    total = cfg.steps or cfg.settle_steps
    epochs = max(1, math.ceil(total / one_pass))
    return epochs, math.ceil(total / epochs)


def run_worker(job, folder, echo=_echo_default, timeout=None):
    """Run `python -m kclassify.qat.worker` on `job` (a job.Job, written into `folder`); stream its
    progress lines to `echo`; return its result dict or raise QATError with its error."""
    folder = Path(folder)
    job_file = folder / "job.json"
    job.write(job_file)
    log = folder / "worker.log"
    start = time.time()
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "kclassify.qat.worker", str(job_file)], env=child_environment(),
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=folder)
        try:
            for line in proc.stdout:
                echo(line.rstrip())
            code = proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    result_file = Path(job.result)
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    result.setdefault("seconds", round(time.time() - start, 1))
    if code != 0 or "error" in result:
        tail = [l for l in log.read_text(errors="replace").splitlines() if l.strip() and not NOISE.search(l)][-15:]
        message = result.get("error") or f"the QAT worker exited with code {code} and no result"
        if code != 2 and tail:
            message += "\nworker log (last lines):\n  " + "\n  ".join(tail)
        raise QATError(message)
    return result


def child_environment():
    """This process's environment plus TF_USE_LEGACY_KERAS=1 (the child's only) and a PYTHONPATH
    that finds this kclassify even when it is not installed."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": root + (os.pathsep + path if path else "")}


def qat(run_dir, epochs=None, lr=None, batch_size=None, steps_per_epoch=None, steps=None, keep=None, out=None,
        echo=_echo_default):
    """Quantization-aware fine-tuning of a run's model to an int8 .tflite (uint8 input, float32
    probabilities), compared with the post-training int8 export on the validation split. Writes
    `out` (default RUN/model_qat_int8.tflite) and its .json: the QAT file, or with keep="better"
    (the default) the post-training one where that scored higher (the QAT file then goes to
    <out>_rejected.tflite). Returns the report."""
    prep = Prepared(run_dir, dict(epochs=epochs, lr=lr, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                                  steps=steps, keep=keep), "qat", echo)
    training, why = prep.training()
    out = Path(out) if out else prep.run_dir / "model_qat_int8.tflite"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kclassify-qat-") as folder:
        model_files, data_files = prep.write(folder)
        job = Job(task="qat", result=str(Path(folder) / "result.json"), tolerance=prep.cfg.tolerance,
                  model=model_files, data=data_files, train=training, out=str(Path(folder) / out.name))
        echo(f"QAT of {prep.run_dir} in a tf_keras worker process: {why}")
        if prep.phase:
            echo(f"  {prep.phase}")
        worker = run_worker(job, folder, echo)
        out.write_bytes(Path(job.out).read_bytes())
    worker.pop("file", None)
    settled = settle_step(worker.get("range_log", []))
    extra = {"epochs": training.epochs, "steps": worker["steps"], "lr": training.lr, "optimizer": training.optimizer,
             "settings": why, "trainable": prep.phase or "every layer (a fit run)", "ranges_settled_at_step": settled}
    report = prep.measure(out, "qat-int8", worker, extra)
    return choose(prep, out, report, echo)


def choose(prep, out, report, echo):
    """Measure the post-training int8 export on the same images and keep the file that agrees with
    the float model on more of them (the QAT one on a tie), unless qat.keep is "qat". Agreement
    needs no labels, so the choice cannot fit the validation labels (the max-drop search's rule);
    both files' labelled top-1 is reported. Rewrites <out>.json with both figures."""
    ptq_file = prep.run_dir / "model_int8.tflite"
    ptq = prep.export_job.export("int8", ptq_file, max_drop=None)
    qat_agree, ptq_agree = report["agreement"], ptq["agreement"]
    figures = lambda r: {k: r[k] for k in ("file", "size_bytes", "tflite", "agreement", "max_prob_diff")}
    both = {"qat": figures(report), "post_training": {**figures(ptq), "calibration_images": ptq["calibration_images"]},
            "float_top1": report["keras"]["top1"], "split": f"validation ({report['tflite']['count']} images)"}
    echo(f"on the validation split ({report['tflite']['count']} images): float top-1 {report['keras']['top1']:.4f}; "
         f"post-training int8 {ptq['tflite']['top1']:.4f} (agreement {ptq_agree:.4f}), QAT int8 "
         f"{report['tflite']['top1']:.4f} (agreement {qat_agree:.4f})")
    if prep.cfg.keep == "better" and ptq_agree > qat_agree:
        rejected = out.with_name(out.stem + "_rejected.tflite")
        shutil.move(str(out), rejected)
        shutil.move(str(out.with_suffix(".json")), rejected.with_suffix(".json"))
        both["qat"]["file"] = str(rejected)
        shutil.copyfile(ptq_file, out)
        kept = {**ptq, "file": str(out), "kind": "post-training-int8", "qat_run": {k: report[k] for k in
                                                                                   ("worker", "settings", "steps", "lr")}}
        kept["kept"] = (f"post-training int8: it agrees with the float model on {ptq_agree:.4f} of the validation "
                        f"images against QAT's {qat_agree:.4f}; the QAT file is kept as {rejected.name} "
                        "(qat.keep=qat ships it)")
    else:
        kept = dict(report)
        kept["kept"] = ("QAT int8" + (" (qat.keep=qat)" if prep.cfg.keep == "qat" else "") +
                        f": agreement {qat_agree:.4f} against post-training {ptq_agree:.4f} on the validation images")
    kept["comparison"] = both
    out.with_suffix(".json").write_text(json.dumps(kept, indent=1))
    echo(f"{out}: kept {kept['kept']}")
    return kept


def settle_step(rows, threshold=0.02):
    """The first logged step after which no activation range moved by more than `threshold`
    (relative, between two snapshots); None when they never settled in the run."""
    for i, row in enumerate(rows):
        if all(r["max_rel_change"] <= threshold for r in rows[i:]):
            return row["step"]
    return None


def prune(run_dir, sparsity=None, schedule=None, epochs=None, lr=None, batch_size=None, steps_per_epoch=None,
          int8=None, out=None, echo=_echo_default):
    """Magnitude pruning of a run's model while fine-tuning; writes model_pruned.tflite (float32)
    and its .json (and model_pruned_int8.tflite with int8=True). Returns the report."""
    prep = Prepared(run_dir, dict(sparsity=sparsity, schedule=schedule, epochs=epochs, lr=lr, batch_size=batch_size,
                                  steps_per_epoch=steps_per_epoch, prune_int8=int8), "prune", echo)
    cfg = prep.cfg
    training, why = prep.training()
    if training.epochs < 1:
        raise QATError("pruning needs at least one epoch of fine-tuning (--epochs 1 or more)")
    out = Path(out) if out else prep.run_dir / "model_pruned.tflite"
    out.parent.mkdir(parents=True, exist_ok=True)
    int8_out = out.with_name(out.stem + "_int8.tflite")
    with tempfile.TemporaryDirectory(prefix="kclassify-prune-") as folder:
        model_files, data_files = prep.write(folder)
        pruning = Pruning(sparsity=cfg.sparsity, schedule=cfg.schedule, dense_out=str(Path(folder) / "dense.tflite"),
                          int8_out=str(Path(folder) / int8_out.name) if cfg.prune_int8 else None)
        job = Job(task="prune", result=str(Path(folder) / "result.json"), tolerance=cfg.tolerance, model=model_files,
                  data=data_files, train=training, out=str(Path(folder) / out.name), prune=pruning)
        echo(f"pruning {prep.run_dir} to sparsity {cfg.sparsity:g} ({cfg.schedule}) in a tf_keras worker process: {why}")
        worker = run_worker(job, folder, echo)
        out.write_bytes(Path(job.out).read_bytes())
        dense_gzip = len(gzip.compress(Path(pruning.dense_out).read_bytes(), 9))
        if cfg.prune_int8:
            int8_out.write_bytes(Path(pruning.int8_out).read_bytes())
    for key in ("file", "dense_file", "int8_file"):
        worker.pop(key, None)
    extra = {"target_sparsity": cfg.sparsity, "sparsity": worker["sparsity"], "schedule": cfg.schedule,
             "epochs": training.epochs, "lr": training.lr, "dense_float32_gzip_bytes": dense_gzip}
    report = prep.measure(out, "pruned-float32", worker, extra)
    report["gzip_ratio_vs_dense"] = report["gzip_bytes"] / dense_gzip
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    echo(f"{out}: sparsity {worker['sparsity']:.3f} of {worker['prunable_params']:,} prunable weights; "
         f"{report['size_bytes']:,} bytes, gzip {report['gzip_bytes']:,} (dense {dense_gzip:,}); top-1 "
         f"{report['tflite']['top1']:.4f} (Keras float {report['keras']['top1']:.4f}), agreement {report['agreement']:.4f}")
    if cfg.prune_int8:
        rep8 = prep.measure(int8_out, "pruned-int8", {"sparsity": worker["sparsity"]}, extra)
        report["int8"] = {k: rep8[k] for k in ("file", "size_bytes", "gzip_bytes", "tflite", "agreement", "max_prob_diff")}
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        echo(f"{int8_out}: {rep8['size_bytes']:,} bytes, gzip {rep8['gzip_bytes']:,}; top-1 {rep8['tflite']['top1']:.4f}")
    return report


def check_models(models, folder, tolerance=1e-5, quantize=True, samples=8, seed=0, echo=_echo_default):
    """Translate Keras 3 models in one worker and compare outputs on random pixel images (and,
    with `quantize`, let tfmot quantize each: True, False or one flag per model); returns the
    worker's rows ({"name", "max_abs_diff" or "error", ...}) and its environment report. Used by
    the tests; handy to vet an architecture before a long QAT run."""
    require_tfmot()
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    entries = []
    for i, model in enumerate(models):
        images = rng.integers(0, 256, (samples, *model.input_shape[1:])).astype(np.float32)
        files = write_model(model, folder / f"m{i}", images)
        entries.append(ModelFiles(name=model.name, quantize=bool(quantize[i] if isinstance(quantize, (list, tuple))
                                                                 else quantize), **files))
    job = Job(task="check", result=str(folder / "result.json"), tolerance=tolerance, models=entries)
    result = run_worker(job, folder, echo)
    return result["models"], result.get("env", {})
