"""`kclassify export`: write model_<mode>.tflite with a JSON report beside it: size, mode,
input spec, class names, accuracy of the .tflite on the evaluation split (run through
ai-edge-litert) and its agreement with the Keras model."""
import json
from pathlib import Path

import numpy as np

from kclassify.errors import DataError


def export_tflite(path, quant="float32", out=None, model=None, data=None, data_spec=None,
                  calibration_count=300, echo=print):
    """Export a run folder (or .keras file with `data_spec`) to TFLite and measure it."""
    from kclassify.evaluate import evaluation_split, load_model, predict
    from kclassify.export.convert import calibration_images, convert
    from kclassify.litert_runner import TFLiteClassifier
    from kclassify.metrics import classification_report

    run_dir = Path(path) if Path(path).is_dir() else None
    if model is None:
        model, run_dir = load_model(path)
    calib_split, val, names = _splits(run_dir, model, data, data_spec, evaluation_split)
    calib = calibration_images(calib_split, calibration_count) if quant == "int8" else None
    blob = convert(model, quant, calib)
    out = Path(out) if out else (run_dir or Path(path).parent) / f"model_{quant}.tflite"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)

    lite = TFLiteClassifier(out)
    lite_probs = lite.predict(val.images)
    keras_probs = predict(model, val.images)
    rep = classification_report(lite_probs, val.labels, names)
    scale, zero = lite.input["quantization"]
    report = {
        "file": str(out), "size_bytes": len(blob), "quant": quant,
        "input": {"shape": [None, *lite.input_shape], "dtype": np.dtype(lite.input["dtype"]).name,
                  "scale": float(scale), "zero_point": int(zero), "pixels": "raw 0..255, RGB (or gray)",
                  "resize": "bilinear (PIL) to the input size"},
        "class_names": names,
        "tflite": {k: rep[k] for k in ("top1", "top5", "count")},
        "keras": {"top1": float((keras_probs.argmax(1) == val.labels).mean())},
        "agreement": float((keras_probs.argmax(1) == lite_probs.argmax(1)).mean()),
        "max_prob_diff": float(np.abs(keras_probs - lite_probs).max()),
        "builtins_only": True,
        "calibration_images": 0 if calib is None else len(calib),
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    (out.parent / "labels.txt").write_text("\n".join(names) + "\n")
    return report


def _splits(run_dir, model, data, data_spec, evaluation_split):
    """(calibration split, evaluation split, class names)."""
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
