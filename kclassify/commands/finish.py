"""Finishing a training run, owned in one place (fit and finetune both end here): save the
inference model, evaluate it, write metrics, reports and plots, run the recipe's exports and the
HTML report, and record the command's time against its budget."""
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np

from kclassify.commands.profile import profile_model
from kclassify.commands.report import write_run_report
from kclassify.errors import ExportError, MaxDropNotMet
from kclassify.inference import evaluate_model, write_evaluation
from kclassify.metrics import format_report
from kclassify.models import as_float32
from kclassify.plots import plot_history
from kclassify.runtime import NOISE, tensorflow_installed, timed
from kclassify.train.budget import close
from kclassify.tta import view_count, views_of


def finish_run(run, model, data, recipe, echo=print, budget=None, started=None):
    """The end of a training command: save the inference model, evaluate it (plainly and with the
    recipe's test-time augmentation), write metrics, reports, plots and predictions, then the
    recipe's exports and the HTML report; metrics.json last, with the wall time of the command."""
    clock = budget.clock if budget is not None else time.time
    state, finishing, parts = run.state, clock(), {}

    def part(name, fn, *args):
        out, seconds = timed(lambda: fn(*args), clock)
        parts[name] = round(seconds, 2)
        return out

    model = as_float32(model)  # mixed precision trains; the saved and exported network is float32
    if run.chief:
        part("save", keras.Model(model.input, model.output, name=model.name).save, run.model_path)
    reports, arrays = part("evaluate", _final_evaluation, model, data, recipe, echo)
    metrics = {**{name: {k: r[k] for k in ("top1", "top5", "loss")} for name, r in reports.items()},
               "epochs": state["epoch"], "steps": state["step"], "train_seconds": round(state["train_seconds"], 1),
               "params": int(model.count_params()), "model": recipe.model.name,
               "train_images": len(data.train), "val_images": len(data.val)}
    if "val_tta" in reports:
        metrics["val_tta"].update(tta=recipe.evaluate.tta, views=reports["val_tta"]["views"])
    metrics.update(training_speed(state["history"], model))
    if state.get("recoveries"):
        metrics["recoveries"] = state["recoveries"]
    if not run.chief:
        return metrics
    part("write", _write_evaluation, run, reports, arrays, recipe.output.plots)
    run.write_json("metrics.json", metrics)
    part("exports", _exports, run, model, data, recipe, echo)
    if recipe.output.report:
        part("report", _html_report, run, data, arrays["probs"], echo)
    close(metrics, state, budget, started, finishing, parts, echo, clock)
    run.write_json("metrics.json", metrics)
    echo(json.dumps({k: metrics[k] for k in ("val", "val_tta", "epochs", "steps", "train_images_per_s", "train_gflops",
                                             "wall_seconds") if k in metrics}))
    return metrics


def training_speed(history, model):
    """Training images a second (the median epoch; the first, which compiles, only when it is the only
    one) and the arithmetic rate that makes: 6 multiply-adds' worth of FLOPs per MAC of the forward
    pass (forward, and backward at twice the forward), the figure to hold against a chip's peak."""
    rates = [row["images_per_s"] for row in history if row.get("images_per_s")]
    if not rates:
        return {}
    rate = float(np.median(rates[1:] or rates))
    return {"train_images_per_s": round(rate, 1),
            "train_gflops": round(6 * profile_model(model)["macs"] * rate / 1e9, 2)}


def _final_evaluation(model, data, recipe, echo):
    """({"val": report[, "val_tta": report]}, arrays for val_predictions.npz)."""
    ev = recipe.evaluate
    report, probs = evaluate_model(model, data.val, data.class_names, ev.batch_size)
    echo(format_report(report, title=f"validation ({recipe.model.name})"))
    reports, arrays = {"val": report}, {"probs": probs, "labels": np.asarray(data.val.labels, np.int32)}
    if view_count(ev):
        tta, arrays["probs_tta"] = evaluate_model(model, data.val, data.class_names, ev.batch_size, views_of(ev),
                                                  ev.average, ev.tta_fraction, probs)
        reports["val_tta"] = {**tta, "views": view_count(ev), "tta_fraction": ev.tta_fraction}
        share = f", on the {ev.tta_fraction:.0%} least sure" if ev.tta_fraction < 1 else ""
        echo(f"validation with TTA ({ev.tta}, {view_count(ev)} views{share}): top-1 {tta['top1']:.4f}, "
             f"top-5 {tta['top5']:.4f}")
    return reports, arrays


def _write_evaluation(run, reports, arrays, plots):


    for name, report in reports.items():
        write_evaluation(report, run.dir, name, plots=plots and name == "val")
    np.savez(run.dir / "val_predictions.npz", **arrays)
    if plots and (run.dir / "history.csv").exists():
        plot_history(run.dir / "history.csv", run.dir / "curves.png")


def _exports(run, model, data, recipe, echo):
    if not recipe.output.export:
        return

    if not tensorflow_installed():  # JAX on a machine without TensorFlow
        for mode in recipe.output.export:
            echo(f"export {mode}: skipped: TFLite conversion needs TensorFlow, which is not installed in this Python; "
                 f"on a machine with TensorFlow run `kclassify export {run.dir} --tflite --quant {mode}`")
        return
    if keras.backend.backend() != "tensorflow":
        return _export_under_tensorflow(run, recipe.output.export, echo)
    # Imported here, at the fork: the exporter is TensorFlow's (and LiteRT's), which a JAX process may lack.
    from kclassify.commands.export import ExportJob

    job = ExportJob(run.dir, model=model, data=data, calibration_count=recipe.output.calibration_images)
    for mode in recipe.output.export:
        try:
            rep = job.export(mode)
        except MaxDropNotMet as refused:  # the run itself is complete: say why this file is missing, go on
            echo(f"export {mode}: refused: {refused}")
            continue
        echo(f"export {mode}: {rep['file']} {rep['size_bytes']:,} bytes, top-1 {rep['tflite']['top1']:.4f}, "
             f"agreement with Keras {rep['agreement']:.4f}")


def _export_under_tensorflow(run, modes, echo):
    """The TFLite converter runs on TensorFlow: a run trained on another backend is exported by
    `kclassify export` in a child process on TensorFlow, from the model.keras just saved."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    for mode in modes:
        echo(f"export {mode}: on TensorFlow in a child process (this run trained on {keras.backend.backend()})")
        child = subprocess.run([sys.executable, "-m", "kclassify", "export", str(run.dir), "--tflite", "--quant", mode],
                               env=env, capture_output=True, text=True)
        for line in child.stdout.splitlines() + [x for x in child.stderr.splitlines() if not NOISE.search(x)]:
            echo(f"  {line}")
        if child.returncode == MaxDropNotMet.exit_code and "max-drop NOT met" in child.stderr + child.stdout:
            echo(f"export {mode}: refused (above: the max-drop limit was not met)")
        elif child.returncode:
            raise ExportError(f"export {mode} of {run.dir} on TensorFlow failed (exit {child.returncode}); the trained "
                              f"model is saved: rerun `KERAS_BACKEND=tensorflow kclassify export {run.dir} --tflite "
                              f"--quant {mode}`")


def _html_report(run, data, probs, echo):


    write_run_report(run.dir, data=data, probs=probs, echo=echo)

