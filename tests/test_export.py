"""TFLite export: builtins only, raw uint8 input, int8 close to float, clear errors."""
import json

import numpy as np
import pytest

from conftest import run_cli
from kclassify.errors import ExportError


def op_names(path):
    from ai_edge_litert.interpreter import Interpreter

    return {op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()}


@pytest.fixture(scope="module")
def exports(digits_run):
    from kclassify.export import export_tflite

    return {mode: export_tflite(digits_run, quant=mode, echo=lambda *a: None) for mode in ("float32", "int8")}


def test_int8_takes_raw_uint8_pixels_and_is_builtins_only(exports):
    rep = exports["int8"]
    assert rep["input"]["dtype"] == "uint8" and rep["input"]["scale"] == 1.0 and rep["input"]["zero_point"] == 0
    ops = op_names(rep["file"])
    assert "CONV_2D" in ops and not any(o.startswith("Flex") or o == "CUSTOM" for o in ops)


def test_int8_accuracy_within_one_point_and_small(exports):
    f32, i8 = exports["float32"], exports["int8"]
    assert abs(i8["tflite"]["top1"] - i8["keras"]["top1"]) <= 0.01
    assert f32["agreement"] == 1.0 and f32["max_prob_diff"] < 1e-4
    assert i8["agreement"] >= 0.98
    assert i8["size_bytes"] <= 0.3 * f32["size_bytes"]


def test_report_beside_the_file(exports, digits_run):
    rep = json.loads((digits_run / "model_int8.json").read_text())
    assert rep["class_names"] == [str(i) for i in range(10)] and rep["calibration_images"] == 300
    assert (digits_run / "labels.txt").read_text().split() == rep["class_names"]


def test_calibration_is_stratified_and_pins_input_range():
    from kclassify.data.sources import Split
    from kclassify.export.convert import calibration_images

    labels = np.repeat(np.arange(5), [100, 10, 10, 10, 70])
    images = np.full((200, 4, 4, 3), 128, np.uint8)
    images[:, 0, 0, 0] = labels  # tag each image with its class
    calib = calibration_images(Split(images, labels), 50)
    assert len(calib) == 50 and calib.min() == 0 and calib.max() == 255
    assert np.bincount(calib[1:, 0, 0, 0], minlength=5).min() >= 9


def test_tf_only_op_is_named():
    import keras
    import tensorflow as tf

    from kclassify.export.convert import convert

    class Det(keras.layers.Layer):
        def call(self, x):
            return tf.linalg.det(x)

    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, Det()(keras.layers.Permute((3, 1, 2))(inp)))
    with pytest.raises(ExportError, match="not TFLite builtins.*MatrixDeterminant"):
        convert(model, "float32")


def test_cli_export_and_evaluate(digits_run, tmp_path):
    out = run_cli("export", digits_run, "--tflite", "--quant", "dynamic", "--out", tmp_path / "d.tflite")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "d.tflite" in out.stdout and "agreement" in out.stdout
    ev = run_cli("evaluate", digits_run, "--json", tmp_path / "ev.json")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "precision" in ev.stdout and "top-1" in ev.stdout
    report = json.loads((tmp_path / "ev.json").read_text())
    assert len(report["per_class"]) == 10 and len(report["confusion"]) == 10
    assert (tmp_path / "eval_confusion.png").exists()


def test_cli_model_file_that_is_not_a_model(tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_text("hello")
    out = run_cli("evaluate", fake, "--data", "digits")
    assert out.returncode == 2 and "not a loadable Keras model" in out.stderr and "Traceback" not in out.stderr
    missing = run_cli("export", tmp_path / "nope.keras", "--tflite")
    assert missing.returncode == 2 and "model not found" in missing.stderr


def test_cli_data_path_that_does_not_exist(tmp_path):
    out = run_cli("fit", "cifar10_cpu", "--set", f"data.path={tmp_path}/missing", "--out", tmp_path / "r")
    assert out.returncode == 2 and "data path does not exist" in out.stderr and "Traceback" not in out.stderr
