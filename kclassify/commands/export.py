"""`kclassify export`: model_<mode>.tflite with its spec embedded and a JSON report beside it
(size, input spec, class names, top-1 of the .tflite on the evaluation split run through
ai-edge-litert, agreement with Keras); `--compare` does every mode and writes one table."""
import gzip
import json
import shutil
from pathlib import Path

import keras
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from kclassify.commands.evaluate import evaluation_split
from kclassify.data.splits import calibration_images, resolve_count, take
from kclassify.data.sources import resize_all
from kclassify.errors import DataError, ExportError, MaxDropNotMet
from kclassify.inference import predict
from kclassify.kit import KIT_DIR, KIT_FILES, kitlib
from kclassify.models.saving import load_model
from kclassify.run import Run
from kclassify.tflite.convert import convert, Quantizer
from kclassify.tflite.debug import format_errors, layer_errors
from kclassify.tflite.max_drop import search
from kclassify.tflite.metadata import embed_metadata
from kclassify.tflite.modes import get_mode

RECIPE = "recipe"  # export(max_drop=RECIPE): the run's output.max_drop


class ExportJob:
    """One model and its data, shared by the exports of several modes.

    A run folder (or a .keras file inside one) is opened through kclassify.run.Run: its recipe
    gives the data (training split: calibration; validation split: the max-drop search, unlabelled,
    and the figures) and the calibration default. A bare .keras file needs `data_spec`."""

    def __init__(self, path, model=None, data=None, data_spec=None, calibration_count=None, input_size=None,
                 calibration=None):
        self.source = Path(path)
        if model is None:
            model_file, self.run = Run.resolve(path)
            model = load_model(model_file)
        else:
            self.run = Run.load(path) if self.source.is_dir() and (self.source / "recipe.yaml").is_file() else None
        self.model = model
        self.run_dir = self.run.dir if self.run else None
        self.calib_split, self.val, self.names = self._splits(data, data_spec)
        self.data_spec = data_spec
        self.seed = self.run.recipe.runtime.seed if self.run else 0
        self.calibration_count = calibration_count
        self.resize_note = self.resize_to = None
        self._calib, self._keras_probs, self._val_images = calibration, None, None
        self.calibration_given = calibration is not None
        if input_size and input_size != self.model.input_shape[1]:
            self._resize_in_graph(input_size)

    def _splits(self, data, data_spec):
        """(calibration split, evaluation split, class names)."""
        if data is None and self.run is not None and not data_spec:
            data = self.run.data()
        if data is not None:
            return data.train, data.val, data.class_names
        if not data_spec:
            raise DataError("exporting a bare model file needs --data SPEC for calibration and evaluation")
        split, names = evaluation_split(None, data_spec, self.model)
        return split, split, names

    def _resize_in_graph(self, size):
        """Let the file take size x size frames: a bilinear Resizing layer in front of the network.
        Calibration and evaluation images are brought to that size first (PIL bilinear, as the kit
        does), so the figures measure the file as a device will feed it."""
        height, width, channels = self.model.input_shape[1:]
        pixels = keras.Input((size, size, channels), name="pixels")
        resized = keras.layers.Resizing(height, width, interpolation="bilinear", name="resize_in_graph")(pixels)
        self.model = keras.Model(pixels, self.model(resized), name=f"{self.model.name}_at{size}")
        self.resize_to = size
        self.resize_note = f"resized in the graph (bilinear) from {size}x{size} to {height}x{width}"

    def images(self, split, idx):
        """uint8 images of a split at `idx`, at the size the exported file takes."""
        images = take(split, idx)
        return resize_all(images, self.resize_to) if self.resize_to else images

    @property
    def search_images(self):
        """(what they are, uint8 images) the max-drop search counts flips on, labels unused: the
        evaluation split's images, which the model has not trained on; training images only where
        there is no evaluation split."""
        if len(self.val):
            where = "--data images (labels unused)" if self.data_spec else "validation images (never trained on)"
            return where, self.val_images
        return ("training images (the run has no validation split: the model fitted these, and they flip "
                "less than a user's next image)", self.images(self.calib_split, np.arange(len(self.calib_split))))

    @property
    def mirrored_views_ok(self):
        """Whether a mirrored image keeps its class: the run trained with flips."""
        return bool(self.run and self.run.recipe.augment.flip)

    def calibration_for(self, count=None):
        """`count` calibration images (None: the recipe's output.calibration_images, "auto" without
        a recipe), unaugmented training images balanced across classes."""
        setting = count or (self.run.recipe.output.calibration_images if self.run else "auto")
        count = resolve_count(setting, len(self.names), len(self.calib_split))
        return calibration_images(self.calib_split, count, self.seed, load=self.images)

    @property
    def calibration(self):
        if self._calib is None:
            self._calib = self.calibration_for(self.calibration_count)
        return self._calib

    @property
    def val_images(self):
        if self._val_images is None:
            self._val_images = self.images(self.val, np.arange(len(self.val)))
        return self._val_images

    @property
    def keras_probs(self):
        if self._keras_probs is None:
            self._keras_probs = predict(self.model, self.val_images)
        return self._keras_probs

    def default_out(self, quant, folder=None):
        base = folder or self.run_dir or self.source.parent
        return Path(base) / f"model_{quant}.tflite"

    def debug(self, quant, echo=print, top=15):
        """Rank the layers by quantization error (TFLite quantization debugger)."""
        if not get_mode(quant).calibrate:
            raise ExportError(f"--debug-quant needs a calibrated mode (int8, 16x8...), not {quant}")
        rows = layer_errors(Quantizer(self.model, quant, self.calibration))
        echo(f"quantization error per layer ({quant}, {len(self.calibration)} calibration images; "
             "rmse/scale 0.29 = rounding only):")
        echo(format_errors(rows, top))
        return rows

    def export(self, quant, out=None, allow_flex=False, float_layers=None, max_drop=RECIPE, max_float=None, echo=None,
               bias_correction=True):
        """Convert, embed the spec, evaluate with LiteRT; returns the report (also written as JSON).
        With `max_drop` (points of top-1; by default the recipe's output.max_drop for calibrated
        modes, None for none), the max-drop search (tflite/max_drop.py) picks the layers kept in
        float; the evaluation split is measured once, on the file it chose. Where no attempt is
        within the limit it raises MaxDropNotMet and writes only <out stem>.refused.json (the
        attempts). Calibrated modes correct the biases for the int8 weights' rounding unless
        `bias_correction` is False."""
        mode = get_mode(quant)
        if max_drop == RECIPE:
            max_drop = self.run.recipe.output.max_drop if (self.run and mode.calibrate and not float_layers) else None
        if (float_layers or max_drop is not None) and not mode.calibrate:
            option = "--float-layers" if float_layers else "--max-drop"
            raise ExportError(f"{option} applies to calibrated modes (int8, 16x8...), not {quant}")
        if float_layers and max_drop is not None:
            raise ExportError("give --max-drop (the search picks the float layers) or --float-layers, not both")
        out = Path(out) if out else self.default_out(quant)
        searched = None
        if max_drop is not None:
            blob, searched = self._search(quant, out, max_drop, max_float, echo, bias_correction)
            calib_count = searched["calibration_images"]
        else:
            calib = self.calibration if mode.calibrate else None
            blob = convert(self.model, quant, calib, allow_flex=allow_flex, float_layers=float_layers,
                           bias_correction=bias_correction)
            calib_count = 0 if calib is None else len(calib)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {"file": str(out), "quant": quant, "mode": mode.summary, "class_names": self.names,
                  "calibration_images": calib_count, "float_layers": searched["float_layers"] if searched else float_layers,
                  "bias_correction": bool(bias_correction and mode.calibrate), "source": str(self.source)}
        if searched:
            report["max_drop_search"] = searched
        report = self.finish(out, blob, report)
        if searched and "tflite" in report:  # the evaluation split, measured once, after the search
            drop = (report["keras"]["top1"] - report["tflite"]["top1"]) * 100
            searched.update(eval_drop_points=round(drop, 3), eval_within_max_drop=bool(drop <= max_drop))
            if searched["met"] and drop > max_drop:  # only where the search had to use training images
                searched["eval_note"] = (f"the evaluation split lost {drop:.2f} point(s), over max_drop {max_drop:g}, "
                                         f"though the {searched['search_source'].split(' (')[0]} the search measured "
                                         f"flipped {searched['flip_points_search']:.2f}")
                (echo or (lambda *a: None))(f"warning: {searched['eval_note']}")
            out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        return report

    def _search(self, quant, out, max_drop, max_float, echo, bias_correction):
        """The max-drop search's (file, summary); a refusal leaves its attempts in <out stem>.refused.json."""
        try:
            return search(self, quant, max_drop, max_float, echo or (lambda *a: None), bias_correction)
        except MaxDropNotMet as refused:
            out.parent.mkdir(parents=True, exist_ok=True)
            record = out.with_suffix(".refused.json")
            record.write_text(json.dumps({"quant": quant, "source": str(self.source), "max_drop_search": refused.summary},
                                         indent=1))
            raise MaxDropNotMet(f"{refused} (every attempt: {record})", refused.summary) from None

    def finish(self, out, blob, report):
        """Describe the file's input/output, embed that spec, measure it with LiteRT, and write
        <out>.json and labels.txt beside it. `report` holds the caller's fields ("quant" among
        them); returns it completed. Shared by export, qat and prune."""
        out = Path(out)
        flex = flex_ops(blob)
        report["builtins_only"] = not flex
        report["input"], report["output"] = io_spec(blob, self.model)
        if self.resize_note:
            report["input"]["resize"] = f"PIL bilinear to {report['input']['shape'][1]}x{report['input']['shape'][2]}, then {self.resize_note}"
        if flex:
            report.update(flex_ops=flex, note="uses Flex (TF) ops: plain ai-edge-litert cannot run it, so it was not evaluated")
        else:
            blob = embed_metadata(blob, {k: report[k] for k in ("quant", "input", "output", "class_names")})
        out.write_bytes(blob)
        report["size_bytes"] = len(blob)
        report["gzip_bytes"] = len(gzip.compress(blob, 9))
        if not flex:
            report.update(self.measure(out))
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        (out.parent / "labels.txt").write_text("\n".join(self.names) + "\n")
        return report

    def measure(self, path):
        """top-1 of a .tflite on the evaluation split (LiteRT), agreement and max probability
        difference against the Keras model."""
        kit = kitlib
        lite_probs = kit.Classifier(path).predict(self.val_images)
        keras_probs = self.keras_probs
        rep = kit.classification_report(lite_probs, self.val.labels, self.names)
        return {"tflite": {k: rep[k] for k in ("top1", "top5", "count")},
                "keras": {"top1": float((keras_probs.argmax(1) == self.val.labels).mean())},
                "agreement": float((keras_probs.argmax(1) == lite_probs.argmax(1)).mean()),
                "max_prob_diff": float(np.abs(keras_probs - lite_probs).max())}


def io_spec(blob, model):
    """What the file takes and gives, from the converted file itself."""

    with kitlib.quiet_stderr():
        try:
            it = Interpreter(model_content=bytes(blob))
            details = it.get_input_details()[0], it.get_output_details()[0]
        except (ValueError, RuntimeError):  # Flex ops: describe from the Keras model instead
            details = None
    shape = [None, *[int(d) for d in model.input_shape[1:]]]
    if details is None:
        return ({"shape": shape, "dtype": "float32", "scale": 0.0, "zero_point": 0},
                {"dtype": "float32", "scale": 0.0, "zero_point": 0})
    (inp, outp) = details
    describe = lambda d: {"dtype": np.dtype(d["dtype"]).name, "scale": float(d["quantization"][0]),
                          "zero_point": int(d["quantization"][1])}
    return ({"shape": shape, **describe(inp), "pixels": "raw 0..255, RGB (gray for 1 channel)",
             "resize": "PIL bilinear to the input size"},
            {**describe(outp), "meaning": "class probabilities (softmax)"})


def flex_ops(blob):
    """Names of the Flex (TensorFlow) custom ops in a .tflite, [] when builtins only."""
    model = schema.Model.GetRootAs(bytes(blob), 0)
    names = {model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength())}
    return sorted(n.decode() for n in names if n and n.decode().startswith("Flex"))


def export_tflite(path, quant="float32", out=None, model=None, data=None, data_spec=None, calibration_count=None,
                  echo=print, allow_flex=False, float_layers=None, debug_quant=False, input_size=None, max_drop=RECIPE,
                  max_float=None):
    """Export a run folder (or .keras file with `data_spec`) to TFLite and measure it."""
    job = ExportJob(path, model, data, data_spec, calibration_count, input_size)
    if debug_quant:
        job.debug(quant, echo)
    return job.export(quant, out, allow_flex=allow_flex, float_layers=float_layers, max_drop=max_drop,
                      max_float=max_float, echo=echo)


def copy_kit(dest):
    """Copy the on-device kit (evaluate/benchmark/predict + kitlib + README) into `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in KIT_FILES:
        shutil.copy2(KIT_DIR / name, dest / name)
    return dest
