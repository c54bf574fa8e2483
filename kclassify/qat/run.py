"""Keras 3 side of `kclassify qat` and `kclassify prune`: load the run, describe its model, write
the job (model description, uint8 training/validation/calibration images), run the tfmot worker
in a child process, then measure the .tflite exactly as `kclassify export` does (LiteRT top-1 on
the validation split, agreement and max probability difference against the Keras model).

This process never imports tfmot or tf_keras and never sets TF_USE_LEGACY_KERAS: only the child's
environment carries it.
"""
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kclassify.qat import QATError, require_tfmot


def _echo_default(*args):
    print(*args, flush=True)


class Job:
    """One run folder prepared for the worker: settings, model, recipe, data."""

    def __init__(self, run_dir, overrides, echo=_echo_default):
        require_tfmot()
        from kclassify.evaluate import load_model, resolve_model_path
        from kclassify.recipe import load_recipe

        _, self.run_dir = resolve_model_path(run_dir)
        if self.run_dir is None or not (self.run_dir / "recipe.yaml").is_file():
            raise QATError(f"{run_dir}: qat and prune need a run folder (model.keras with its recipe.yaml)")
        self.recipe = load_recipe(self.run_dir / "recipe.yaml")
        self.cfg = self.settings(overrides)  # bad options fail before TensorFlow loads anything
        from kclassify.data import load_data

        self.model, _ = load_model(self.run_dir)
        self.data = load_data(self.recipe.data, self.recipe.runtime.seed)
        self.echo = echo
        self._export_job = None

    def settings(self, overrides):
        """The recipe's qat section with command-line overrides (None keeps the recipe's value)."""
        from pydantic import ValidationError

        from kclassify.errors import RecipeError
        from kclassify.recipe import QATConfig, explain

        merged = {**self.recipe.qat.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return QATConfig.model_validate(merged)
        except ValidationError as exc:
            lines = ("  qat." + line.strip() for line in explain(exc).splitlines())
            raise RecipeError("invalid qat/prune option\n" + "\n".join(lines)) from None

    def write(self, folder, cfg):
        """The files every task needs; returns the common part of the job dict."""
        from kclassify.export.convert import calibration_images
        from kclassify.qat.graph import write_model

        folder = Path(folder)
        val = self.data.val
        check = val.images[:cfg.check_images]
        model_files = write_model(self.model, folder / "model", check)
        np.savez(folder / "train.npz", images=self.data.train.images, labels=self.data.train.labels)
        np.savez(folder / "val.npz", images=val.images, labels=val.labels)
        calib = calibration_images(self.data.train, self.recipe.output.calibration_images)
        np.savez(folder / "calibration.npz", images=calib)
        aug = self.recipe.augment
        return {"model": model_files, "train": str(folder / "train.npz"), "val": str(folder / "val.npz"),
                "calibration": str(folder / "calibration.npz"), "result": str(folder / "result.json"),
                "epochs": cfg.epochs, "lr": cfg.lr, "momentum": cfg.momentum,
                "batch_size": cfg.batch_size or self.recipe.train.batch_size, "steps_per_epoch": cfg.steps_per_epoch,
                "freeze_bn": cfg.freeze_bn, "calibration_batches": cfg.calibration_batches,
                "tolerance": cfg.tolerance, "seed": self.recipe.runtime.seed,
                "augment": {"crop_pad": aug.crop_pad, "pad_mode": aug.pad_mode, "flip": aug.flip}}

    def measure(self, path, kind, worker, extra=None):
        """Embed the spec, measure with LiteRT, write <file>.json beside it (as `export` does);
        returns the report."""
        from kclassify.export import ExportJob

        if self._export_job is None:  # one job: the Keras predictions are made once per command
            self._export_job = ExportJob(self.run_dir, model=self.model, data=self.data)
        report = {"file": str(path), "kind": kind, "quant": kind, "class_names": self.data.class_names,
                  "source": str(self.run_dir), **(extra or {}), "worker": worker}
        return self._export_job.finish(path, Path(path).read_bytes(), report)


def run_worker(job, folder, echo=_echo_default, timeout=None):
    """Run `python -m kclassify.qat.worker` on `job` (a dict, written into `folder`); stream its
    progress lines to `echo`; return its result dict or raise QATError with its error."""
    folder = Path(folder)
    job_file = folder / "job.json"
    job_file.write_text(json.dumps(job, indent=1))
    env = child_environment()
    log = folder / "worker.log"
    start = time.time()
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "kclassify.qat.worker", str(job_file)], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=folder)
        try:
            for line in proc.stdout:
                echo(line.rstrip())
            code = proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    result_file = Path(job["result"])
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    result.setdefault("seconds", round(time.time() - start, 1))
    if code != 0 or "error" in result:
        from kclassify.runtime import NOISE

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


def _previous_int8(run_dir):
    """top-1 of the post-training int8 export, when `kclassify export --quant int8` wrote one."""
    rep = Path(run_dir) / "model_int8.json"
    try:
        return json.loads(rep.read_text())["tflite"]["top1"]
    except Exception:
        return None


def qat(run_dir, epochs=None, lr=None, batch_size=None, steps_per_epoch=None, out=None, echo=_echo_default):
    """Quantization-aware fine-tuning of a run's model; writes model_qat_int8.tflite (uint8 input,
    float32 probabilities) and model_qat_int8.json beside it. Returns the report."""
    job = Job(run_dir, dict(epochs=epochs, lr=lr, batch_size=batch_size, steps_per_epoch=steps_per_epoch), echo)
    cfg = job.cfg
    out = Path(out) if out else job.run_dir / "model_qat_int8.tflite"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kclassify-qat-") as folder:
        spec = job.write(folder, cfg)
        spec.update(task="qat", out=str(Path(folder) / out.name))
        echo(f"QAT of {job.run_dir}: {cfg.epochs} epoch(s) at lr {cfg.lr:g} in a tf_keras worker process")
        worker = run_worker(spec, folder, echo)
        out.write_bytes(Path(spec["out"]).read_bytes())
    worker.pop("file", None)
    extra = {"epochs": cfg.epochs, "lr": cfg.lr, "ptq_int8_top1": _previous_int8(job.run_dir)}
    report = job.measure(out, "qat-int8", worker, extra)
    echo(f"{out}: {report['size_bytes']:,} bytes, input {report['input']['dtype']} (scale "
         f"{report['input']['scale']:g}, zero point {report['input']['zero_point']}); top-1 "
         f"{report['tflite']['top1']:.4f} (Keras float {report['keras']['top1']:.4f}), agreement {report['agreement']:.4f}")
    return report


def prune(run_dir, sparsity=None, schedule=None, epochs=None, lr=None, batch_size=None, steps_per_epoch=None,
          int8=None, out=None, echo=_echo_default):
    """Magnitude pruning of a run's model while fine-tuning; writes model_pruned.tflite (float32)
    and its .json (and model_pruned_int8.tflite with int8=True). Returns the report."""
    job = Job(run_dir, dict(sparsity=sparsity, schedule=schedule, epochs=epochs, lr=lr, batch_size=batch_size,
                            steps_per_epoch=steps_per_epoch, prune_int8=int8), echo)
    cfg = job.cfg
    if cfg.epochs < 1:
        raise QATError("pruning needs at least one epoch of fine-tuning (--epochs 1 or more)")
    out = Path(out) if out else job.run_dir / "model_pruned.tflite"
    out.parent.mkdir(parents=True, exist_ok=True)
    int8_out = out.with_name(out.stem + "_int8.tflite")
    with tempfile.TemporaryDirectory(prefix="kclassify-prune-") as folder:
        spec = job.write(folder, cfg)
        spec.update(task="prune", sparsity=cfg.sparsity, schedule=cfg.schedule, out=str(Path(folder) / out.name),
                    dense_out=str(Path(folder) / "dense.tflite"), freeze_bn=cfg.prune_freeze_bn)
        if cfg.prune_int8:
            spec["int8_out"] = str(Path(folder) / int8_out.name)
        echo(f"pruning {job.run_dir} to sparsity {cfg.sparsity:g} ({cfg.schedule}), {cfg.epochs} epoch(s) "
             f"at lr {cfg.lr:g} in a tf_keras worker process")
        worker = run_worker(spec, folder, echo)
        out.write_bytes(Path(spec["out"]).read_bytes())
        dense_gzip = len(gzip.compress(Path(spec["dense_out"]).read_bytes(), 9))
        if cfg.prune_int8:
            int8_out.write_bytes(Path(spec["int8_out"]).read_bytes())
    for key in ("file", "dense_file", "int8_file"):
        worker.pop(key, None)
    extra = {"target_sparsity": cfg.sparsity, "sparsity": worker["sparsity"], "schedule": cfg.schedule,
             "epochs": cfg.epochs, "lr": cfg.lr, "dense_float32_gzip_bytes": dense_gzip}
    report = job.measure(out, "pruned-float32", worker, extra)
    report["gzip_ratio_vs_dense"] = report["gzip_bytes"] / dense_gzip
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    echo(f"{out}: sparsity {worker['sparsity']:.3f} of {worker['prunable_params']:,} prunable weights; "
         f"{report['size_bytes']:,} bytes, gzip {report['gzip_bytes']:,} (dense {dense_gzip:,}); top-1 "
         f"{report['tflite']['top1']:.4f} (Keras float {report['keras']['top1']:.4f}), agreement {report['agreement']:.4f}")
    if cfg.prune_int8:
        rep8 = job.measure(int8_out, "pruned-int8", {"sparsity": worker["sparsity"]}, extra)
        report["int8"] = {k: rep8[k] for k in ("file", "size_bytes", "gzip_bytes", "tflite", "agreement", "max_prob_diff")}
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        echo(f"{int8_out}: {rep8['size_bytes']:,} bytes, gzip {rep8['gzip_bytes']:,}; top-1 {rep8['tflite']['top1']:.4f}")
    return report


def check_models(models, folder, tolerance=1e-5, quantize=True, samples=8, seed=0, echo=_echo_default):
    """Translate Keras 3 models in one worker and compare outputs on random pixel images (and,
    with `quantize`, let tfmot quantize each: True, False or one flag per model); returns the
    worker's rows ({"name", "max_abs_diff" or "error", ...}) and its environment report. Used by
    the tests; handy to vet an architecture before a long QAT run."""
    from kclassify.qat.graph import write_model

    require_tfmot()
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    entries = []
    for i, model in enumerate(models):
        images = rng.integers(0, 256, (samples, *model.input_shape[1:])).astype(np.float32)
        entry = write_model(model, folder / f"m{i}", images)
        entry["name"] = model.name
        entry["quantize"] = bool(quantize[i] if isinstance(quantize, (list, tuple)) else quantize)
        entries.append(entry)
    job = {"task": "check", "models": entries, "tolerance": tolerance,
           "result": str(folder / "result.json")}
    result = run_worker(job, folder, echo)
    return result["models"], result.get("env", {})
