"""`kclassify export`: model_<mode>.tflite with its spec embedded and a JSON report beside it
(size, input spec, class names, top-1 of the .tflite on the evaluation split run through
ai-edge-litert, agreement with Keras); `--compare` does every mode and writes one table."""
import gzip
import json
import shutil
from pathlib import Path

import numpy as np

from kclassify.errors import DataError, ExportError


class ExportJob:
    """One model and its data, shared by the exports of several modes."""

    def __init__(self, path, model=None, data=None, data_spec=None, calibration_count=300, input_size=None):
        from kclassify.evaluate import load_model

        self.run_dir = Path(path) if Path(path).is_dir() else None
        self.source = Path(path)
        self.model = model
        if model is None:
            self.model, self.run_dir = load_model(path)
        self.calib_split, self.val, self.names = _splits(self.run_dir, self.model, data, data_spec)
        self.calibration_count = calibration_count
        self.resize_note = None
        self._calib = self._keras_probs = None
        if input_size and input_size != self.model.input_shape[1]:
            self._resize_in_graph(input_size)

    def _resize_in_graph(self, size):
        """Let the file take size x size frames: a bilinear Resizing layer in front of the network.
        Calibration and evaluation images are brought to that size first (PIL bilinear, as the kit
        does), so the figures measure the file as a device will feed it."""
        import keras

        from kclassify.data.sources import Split, resize_all

        height, width, channels = self.model.input_shape[1:]
        pixels = keras.Input((size, size, channels), name="pixels")
        resized = keras.layers.Resizing(height, width, interpolation="bilinear", name="resize_in_graph")(pixels)
        self.model = keras.Model(pixels, self.model(resized), name=f"{self.model.name}_at{size}")
        self.calib_split = Split(resize_all(self.calib_split.images, size), self.calib_split.labels)
        self.val = Split(resize_all(self.val.images, size), self.val.labels)
        self.resize_note = f"resized in the graph (bilinear) from {size}x{size} to {height}x{width}"

    @property
    def calibration(self):
        from kclassify.export.convert import calibration_images

        if self._calib is None:
            self._calib = calibration_images(self.calib_split, self.calibration_count)
        return self._calib

    @property
    def keras_probs(self):
        from kclassify.evaluate import predict

        if self._keras_probs is None:
            self._keras_probs = predict(self.model, self.val.images)
        return self._keras_probs

    def default_out(self, quant, folder=None):
        base = folder or self.run_dir or self.source.parent
        return Path(base) / f"model_{quant}.tflite"

    def debug(self, quant, echo=print, top=15):
        """Rank the layers by quantization error (TFLite quantization debugger)."""
        from kclassify.export.convert import make_converter
        from kclassify.export.debug import format_errors, layer_errors
        from kclassify.export.modes import get_mode

        if not get_mode(quant).calibrate:
            raise ExportError(f"--debug-quant needs a calibrated mode (int8, 16x8...), not {quant}")
        rows = layer_errors(make_converter(self.model, quant, self.calibration), self.calibration)
        echo(f"quantization error per layer ({quant}, {len(self.calibration)} calibration images; "
             "rmse/scale 0.29 = rounding only):")
        echo(format_errors(rows, top))
        return rows

    def export(self, quant, out=None, allow_flex=False, float_layers=None):
        """Convert, embed the spec, evaluate with LiteRT; returns the report (also written as JSON)."""
        from kclassify.export.convert import convert
        from kclassify.export.modes import get_mode

        mode = get_mode(quant)
        calib = self.calibration if mode.calibrate else None
        if float_layers and not mode.calibrate:
            raise ExportError(f"--float-layers applies to calibrated modes (int8, 16x8...), not {quant}")
        blob = convert(self.model, quant, calib, allow_flex=allow_flex, float_layers=float_layers)
        out = Path(out) if out else self.default_out(quant)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {"file": str(out), "quant": quant, "mode": mode.summary, "class_names": self.names,
                  "calibration_images": 0 if calib is None else len(calib),
                  "float_layers": float_layers, "source": str(self.source)}
        return self.finish(out, blob, report)

    def finish(self, out, blob, report):
        """Describe the file's input/output, embed that spec, measure it with LiteRT, and write
        <out>.json and labels.txt beside it. `report` holds the caller's fields ("quant" among
        them); returns it completed. Shared by export, qat and prune."""
        from kclassify.export.metadata import embed_metadata

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
        from kclassify.kit import kitlib

        kit = kitlib()
        lite_probs = kit.Classifier(path).predict(self.val.images)
        keras_probs = self.keras_probs
        rep = kit.classification_report(lite_probs, self.val.labels, self.names)
        return {"tflite": {k: rep[k] for k in ("top1", "top5", "count")},
                "keras": {"top1": float((keras_probs.argmax(1) == self.val.labels).mean())},
                "agreement": float((keras_probs.argmax(1) == lite_probs.argmax(1)).mean()),
                "max_prob_diff": float(np.abs(keras_probs - lite_probs).max())}


def io_spec(blob, model):
    """What the file takes and gives, from the converted file itself."""
    from ai_edge_litert.interpreter import Interpreter

    from kclassify.kit import kitlib

    with kitlib().quiet_stderr():
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
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytes(blob), 0)
    names = {model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength())}
    return sorted(n.decode() for n in names if n and n.decode().startswith("Flex"))


def export_tflite(path, quant="float32", out=None, model=None, data=None, data_spec=None, calibration_count=300,
                  echo=print, allow_flex=False, float_layers=None, debug_quant=False, input_size=None):
    """Export a run folder (or .keras file with `data_spec`) to TFLite and measure it."""
    job = ExportJob(path, model, data, data_spec, calibration_count, input_size)
    if debug_quant:
        job.debug(quant, echo)
    return job.export(quant, out, allow_flex=allow_flex, float_layers=float_layers)


def copy_kit(dest):
    """Copy the on-device kit (evaluate/benchmark/predict + kitlib + README) into `dest`."""
    from kclassify.kit import KIT_FILES, kit_dir

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in KIT_FILES:
        shutil.copy2(kit_dir() / name, dest / name)
    return dest


def _splits(run_dir, model, data, data_spec):
    """(calibration split, evaluation split, class names)."""
    from kclassify.evaluate import evaluation_split

    if data is not None:
        return data.train, data.val, data.class_names
    if run_dir is not None and not data_spec:
        from kclassify.data import load_data
        from kclassify.recipe import load_recipe

        recipe = load_recipe(run_dir / "recipe.yaml")
        data = load_data(recipe.data, recipe.runtime.seed)
        return data.train, data.val, data.class_names
    if not data_spec:
        raise DataError("exporting a bare model file needs --data SPEC for calibration and evaluation")
    split, names = evaluation_split(None, data_spec, model)
    return split, split, names
