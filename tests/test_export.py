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
    from kclassify.commands.export import export_tflite

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
    from kclassify.data.splits import auto_count

    rep = json.loads((digits_run / "model_int8.json").read_text())
    assert rep["class_names"] == [str(i) for i in range(10)] and rep["calibration_images"] == auto_count(10, 1000)
    assert (digits_run / "labels.txt").read_text().split() == rep["class_names"]


def test_calibration_is_stratified_and_pins_input_range():
    from kclassify.data.sources import Split
    from kclassify.data.splits import calibration_images

    labels = np.repeat(np.arange(5), [100, 10, 10, 10, 70])
    images = np.full((200, 4, 4, 3), 128, np.uint8)
    images[:, 0, 0, 0] = labels  # tag each image with its class
    calib = calibration_images(Split(images, labels), 50)
    assert len(calib) == 50 and calib.min() == 0 and calib.max() == 255
    assert np.bincount(calib[1:, 0, 0, 0], minlength=5).min() >= 9
    # small classes give all they have, the big ones fill the count
    calib = calibration_images(Split(images, labels), 100)
    assert len(calib) == 100 and list(np.bincount(calib[1:, 0, 0, 0], minlength=5)[1:4]) == [10, 10, 10]


class Streamed:
    """A split without .images: labels, len() and take(indices), as streamed splits offer."""

    def __init__(self, images, labels):
        self._images, self.labels, self.taken = images, labels, []

    def __len__(self):
        return len(self.labels)

    def take(self, idx):
        self.taken.append(len(idx))
        return self._images[idx]


def test_calibration_and_search_read_only_what_they_pick():
    from kclassify.data.splits import auto_count, calibration_images, search_indices

    labels = np.repeat(np.arange(10), 300)
    split = Streamed(np.zeros((3000, 2, 2, 3), np.uint8), labels)
    search = search_indices(labels)
    calib = calibration_images(split, auto_count(10, len(labels) - len(search)), exclude=search)
    assert len(calib) == 320 and split.taken == [320]
    assert 400 <= len(search) <= 500 and set(np.bincount(labels[search])) == {45}
    assert auto_count(10, 5000) == 320 and auto_count(2, 5000) == 300 and auto_count(100, 5000) == 1000
    assert auto_count(10, 120) == 120


def badly_quantized(model, spoil=("stem_conv", "head_dense")):
    """`model` with layers that int8 cannot represent and the same float outputs: each Conv2D or
    Dense in `spoil` also gets as many inputs that are always zero (its input times 0), with
    weights 1000x its largest. Its int8 weight scales are stretched 1000x, so its real weights
    round to zero; in float the huge weights multiply zeros."""
    import keras

    tensors = {id(model.input): model.input}
    for layer in model.layers[1:]:
        x = [tensors[id(t)] for t in layer.input] if isinstance(layer.input, list) else tensors[id(layer.input)]
        if layer.name in spoil:
            kernel, *rest = layer.get_weights()
            zeros = keras.layers.Rescaling(0.0, name=f"{layer.name}_zeros")(x)
            wide = keras.layers.Concatenate(name=f"{layer.name}_wide")([x, zeros])
            twin = type(layer).from_config(layer.get_config())
            y = twin(wide)
            twin.set_weights([np.concatenate([kernel, np.full_like(kernel, 1000 * np.abs(kernel).max())], axis=-2),
                              *rest])
        else:
            y = layer(x)
        tensors[id(layer.output)] = y
    return keras.Model(model.input, y, name="spoiled")


@pytest.fixture(scope="module")
def broken_job(digits_run):
    from kclassify.models.saving import load_model
    from kclassify.commands.export import ExportJob

    return ExportJob(digits_run, model=badly_quantized(load_model(digits_run)))


@pytest.mark.parametrize("order", ["ranked", "head_first"])
def test_budget_search_ships_the_fewest_float_layers_that_meet_it(broken_job, tmp_path, monkeypatch, order):
    """Two ruined layers: floating either alone gains nothing (the other still ruins int8), in
    whichever order the debugger ranks them; the search keeps both and prunes what is not needed."""
    from kclassify.tflite import max_drop

    if order == "head_first":  # the other order the debugger may rank them in (its errors are near ties)
        ranked = max_drop.layer_groups
        monkeypatch.setattr(max_drop, "layer_groups", lambda rows: sorted(ranked(rows), key=lambda g: g[0][:5] != "head_"))
    lines = []
    # 2.5 points: with both ruined layers in float, plain int8 noise on 216 images is 0-2 points (run to run)
    rep = broken_job.export("int8", tmp_path / "budget.tflite", max_drop=2.5, echo=lines.append)
    budget, said = rep["max_drop_search"], "\n".join(lines)
    attempts = budget["attempts"]
    assert attempts[0]["note"] == "plain" and attempts[0]["drop_points"] > 50, said  # the spoiled layers ruin int8
    forward = [a for a in attempts if "(pruning)" not in a["note"]]
    assert budget["met"] and forward[-1]["within_max_drop"], said  # the forward pass stopped at the first set within
    assert not any(a["within_max_drop"] for a in forward[:-1]), said
    assert sorted(n[:5] for n in budget["float_layers"]) == ["head_", "stem_"], said  # the spoiled ones (stem: fused)
    chosen = attempts[budget["chosen_attempt"] - 1]
    assert chosen["within_max_drop"] and all(len(a["float_layers"]) >= 2 for a in attempts if a["within_max_drop"])
    assert rep["float_layers"] == budget["float_layers"] and rep["input"]["dtype"] == "uint8"
    assert budget["size_bytes"] > budget["plain_size_bytes"] and budget["latency_ms_1t"]["ratio"] > 0
    assert budget["search_images"] < 300 and rep["tflite"]["count"] == 360  # searched on training images
    assert budget["eval_drop_points"] == round((rep["keras"]["top1"] - rep["tflite"]["top1"]) * 100, 3)
    assert budget["eval_drop_points"] <= 4 and any("max-drop met by attempt" in line for line in lines)
    saved = json.loads((tmp_path / "budget.json").read_text())
    assert saved["max_drop_search"]["eval_drop_points"] == budget["eval_drop_points"]


def test_budget_not_met_within_the_limit_ships_the_best_and_says_so(broken_job, tmp_path):
    rep = broken_job.export("int8", tmp_path / "b.tflite", max_drop=1.0, max_float=1, echo=lambda *a: None)
    budget = rep["max_drop_search"]
    assert not budget["met"] and "max-drop NOT met" in budget["message"] and "limit" in budget["message"]
    # the limit: one layer tried in float (one of the two spoiled ones: the other still ruins int8)
    tried = [a for a in budget["attempts"] if a["float_layers"]]
    assert len(tried) == 1 and len(tried[0]["float_layers"]) == 1 and len(budget["float_layers"]) <= 1
    best = min(budget["attempts"], key=lambda a: (a["drop_points"], len(a["float_layers"])))
    assert budget["chosen_attempt"] == best["attempt"] and budget["drop_points_search"] == best["drop_points"] > 1.0


def test_drop_margin_is_the_paired_95_percent_half_width():
    from kclassify.tflite.max_drop import drop_margin

    float_right = np.ones(400, bool)
    assert drop_margin(float_right, float_right) == 0.0  # no disagreement, no doubt
    quant_right = float_right.copy()
    quant_right[:20] = False  # 20 of 400 lost: d is 1 on 20 images, p = 0.05
    expected = 1.96 * np.sqrt(0.05 * 0.95 / 400) * 100
    assert drop_margin(float_right, quant_right) == pytest.approx(expected)  # 2.14 points
    both = quant_right.copy()
    both[20:40] = False
    float_wrong = float_right.copy()
    float_wrong[20:40] = False  # 20 more that both get wrong change nothing
    assert drop_margin(float_wrong, both) == pytest.approx(expected)


def test_a_budget_below_what_the_search_images_resolve_is_said(broken_job, tmp_path):
    lines = []
    rep = broken_job.export("int8", tmp_path / "tight.tflite", max_drop=0.05, max_float=1, echo=lines.append)
    budget = rep["max_drop_search"]  # one layer in float leaves int8 ruined: 88.9 points lost, +/- 4.2 on 216 images
    assert not budget["met"] and budget["drop_margin95_search"] > 1
    assert "cannot tell" in budget["resolution_note"] and "note: 216 search images" in budget["message"]
    assert all(line.count("(+/- ") == 1 for line in lines if line.lstrip().startswith("attempt"))
    wide = broken_job.export("int8", tmp_path / "wide.tflite", max_drop=99, echo=lambda *a: None)
    assert wide["max_drop_search"]["met"] and wide["max_drop_search"]["chosen_attempt"] == 1  # the ruined file, within a 99-point budget
    assert 1 < wide["max_drop_search"]["drop_margin95_search"] < 99 and "resolution_note" not in wide["max_drop_search"]


def test_max_drop_holdout_keeps_the_search_images_out_of_training(tmp_path):
    """output.max_drop_holdout: training leaves out exactly the images the max-drop search measures
    on, so the search sees unseen images; without it the search says they were trained on."""
    from conftest import tiny_recipe
    from kclassify.data import load_data
    from kclassify.commands.export import ExportJob
    from kclassify.data.splits import hold_out_for_max_drop, search_indices
    from kclassify.commands.fit import fit

    recipe = tiny_recipe(tmp_path, train={"epochs": 1}, output={"max_drop": 5.0, "max_drop_holdout": True})
    full = load_data(recipe.data, recipe.runtime.seed)
    held = search_indices(full.train.labels, recipe.runtime.seed)
    trained = hold_out_for_max_drop(full, recipe)
    assert len(trained.train) == len(full.train) - len(held) and trained.train_all is full.train
    kept = np.setdiff1d(np.arange(len(full.train)), held)
    np.testing.assert_array_equal(trained.train.images, full.train.images[kept])  # none of the held-out ones
    lines = []
    run = fit(recipe, echo=lines.append)
    labels = json.loads((run / "labels.json").read_text())
    assert labels["max_drop_search_held_out"] == len(held) and labels["train_images"] == len(kept)
    assert any(line.startswith(f"note: output.max_drop_holdout: {len(held)} training images kept out") for line in lines)
    job = ExportJob(run)
    assert job.search_unseen and len(job.calib_split) == len(full.train)
    np.testing.assert_array_equal(job.search[0], held)
    rep = job.export("int8", tmp_path / "b.tflite", echo=lines.append)  # the recipe's max_drop
    assert rep["max_drop_search"]["search_images_trained_on"] is False
    assert any("(kept out of training;" in line for line in lines)
    assert hold_out_for_max_drop(full, tiny_recipe(tmp_path / "plain", output={"max_drop": 0.5})) is full  # off


def test_a_budget_met_on_the_search_images_but_not_on_the_evaluation_split_is_reported(broken_job, tmp_path,
                                                                                       monkeypatch):
    """The search images were trained on and can flip less than unseen ones: when the shipped file
    is over budget on the evaluation split, the report and the output say so."""
    from kclassify.commands import export as export_command
    from kclassify.tflite.convert import convert

    def optimistic(job, quant, max_drop, max_float, echo):  # a search that saw no drop at all
        return convert(job.model, quant, job.calibration), {
            "met": True, "drop_points_search": 0.0, "drop_margin95_search": 0.0, "float_layers": [],
            "calibration_images": len(job.calibration)}

    monkeypatch.setattr(export_command, "search", optimistic)
    lines = []
    rep = broken_job.export("int8", tmp_path / "o.tflite", max_drop=0.5, echo=lines.append)
    budget = rep["max_drop_search"]
    assert budget["eval_drop_points"] > 0.5 and not budget["eval_within_max_drop"]
    assert "over the max_drop 0.5" in budget["eval_note"] and "the model trained on those" in budget["eval_note"]
    assert any(line.startswith("warning: the evaluation split lost") for line in lines)
    assert json.loads((tmp_path / "o.json").read_text())["max_drop_search"]["eval_note"] == budget["eval_note"]


def test_budget_needs_training_data_apart_from_the_evaluation_split(digits_run, tmp_path):
    from kclassify.commands.export import ExportJob

    job = ExportJob(digits_run / "model.keras", data_spec="digits")
    with pytest.raises(ExportError, match="--max-drop needs a run folder"):
        job.export("int8", tmp_path / "x.tflite", max_drop=0.5)
    with pytest.raises(ExportError, match="calibrated modes"):
        ExportJob(digits_run).export("float16", tmp_path / "y.tflite", max_drop=0.5)


@pytest.fixture(scope="module")
def compared(digits_run, tmp_path_factory):
    from kclassify.commands.export import ExportJob
    from kclassify.tflite.compare import compare_modes

    folder = tmp_path_factory.mktemp("compare")
    return compare_modes(ExportJob(digits_run), folder=folder, runs=20, rounds=1, echo=lambda *a: None), folder


def test_compare_covers_every_mode_in_one_table(compared):
    from kclassify.tflite.modes import MODES

    rows, folder = compared
    assert [r["mode"] for r in rows] == list(MODES)
    table = (folder / "compare.md").read_text()
    assert all(f"| {m} |" in table for m in MODES) and "ms @1T" in table and "ms @2T" in table
    saved = json.loads((folder / "compare.json").read_text())["rows"]
    for r in saved:
        assert r["latency_ms_1t"] > 0 and r["latency_ms_2t"] > 0 and 0 <= r["max_prob_diff"] <= 1
        assert r["agreement"] >= 0.97, r["mode"]
    by = {r["mode"]: r for r in saved}
    assert by["int8"]["size_ratio"] <= 0.3 and by["float16"]["size_ratio"] < 0.55


def test_io_types_of_the_modes(compared):
    rows, _ = compared
    io = {r["mode"]: (r["input"], r["output"]) for r in rows}
    assert io == {"float32": ("float32", "float32"), "float16": ("float32", "float32"),
                  "dynamic": ("float32", "float32"), "int8": ("uint8", "float32"),
                  "int8-uint8io": ("uint8", "uint8"), "int8-int8io": ("int8", "int8"),
                  "int8-xnnpack": ("uint8", "float32"), "int8-pertensor": ("uint8", "float32"),
                  "16x8": ("float32", "float32")}


def test_16x8_has_int16_activations(compared):
    from ai_edge_litert.interpreter import Interpreter

    rows, _ = compared
    path = next(r["file"] for r in rows if r["mode"] == "16x8")
    dtypes = {t["dtype"] for t in Interpreter(model_path=path).get_tensor_details()}
    assert np.int16 in dtypes and np.int8 in dtypes


def test_pertensor_mode_has_one_scale_per_weight_tensor_and_a_smaller_file(compared):
    from ai_edge_litert.interpreter import Interpreter

    rows, _ = compared
    by = {r["mode"]: r for r in rows}

    def kernel_scales(path):
        details = Interpreter(model_path=path).get_tensor_details()
        return [len(t["quantization_parameters"]["scales"]) for t in details
                if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["shape"][0] > 1 and t["shape"][1] <= 3]

    assert set(kernel_scales(by["int8-pertensor"]["file"])) == {1}
    assert max(kernel_scales(by["int8"]["file"])) > 1
    assert by["int8-pertensor"]["size_bytes"] < by["int8"]["size_bytes"]


def test_int8_int8io_takes_pixels_minus_128(compared):
    from kclassify.kit import kitlib

    rows, _ = compared
    path = next(r["file"] for r in rows if r["mode"] == "int8-int8io")
    spec = kitlib.read_metadata(path)
    assert spec["input"]["dtype"] == "int8" and spec["input"]["scale"] == 1.0 and spec["input"]["zero_point"] == -128


def test_spec_is_embedded_as_tflite_metadata(exports):
    from kclassify.kit import kitlib

    rep = exports["int8"]
    spec = kitlib.read_metadata(rep["file"])
    assert spec["class_names"] == rep["class_names"] and spec["input"] == rep["input"]
    assert spec["quant"] == "int8" and spec["output"]["dtype"] == "float32"


def test_debugger_ranks_layers_and_float_layers_keeps_them_float(digits_run, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from kclassify.commands.export import ExportJob

    job = ExportJob(digits_run)
    rows = job.debug("int8", echo=lambda *a: None)
    scores = [r["rmse_over_scale"] for r in rows]
    assert scores == sorted(scores, reverse=True) and len(rows) >= 20
    assert any("head_dense" in r["tensor"] for r in rows)
    rep = job.export("int8", tmp_path / "mixed.tflite", float_layers="stage3_block3")
    assert rep["agreement"] >= 0.97 and rep["input"]["dtype"] == "uint8"
    it = Interpreter(model_path=rep["file"])
    float_convs = [op for op in it._get_ops_details()
                   if op["op_name"] == "CONV_2D" and op["result_types"] == [np.float32]]
    int8_convs = [op for op in it._get_ops_details()
                  if op["op_name"] == "CONV_2D" and op["result_types"] == [np.int8]]
    assert len(float_convs) == 2 and len(int8_convs) >= 17  # the block's two convs stay float
    with pytest.raises(ExportError, match="matches no quantized layer"):
        job.export("int8", tmp_path / "x.tflite", float_layers="no_such_layer")


def test_allow_flex_exports_and_says_it_cannot_be_run_here(tmp_path):
    import keras
    import tensorflow as tf

    from kclassify.tflite.convert import convert
    from kclassify.commands.export import flex_ops

    class Det(keras.layers.Layer):
        def call(self, x):
            return tf.linalg.det(x)

    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, Det()(keras.layers.Permute((3, 1, 2))(inp)))
    blob = convert(model, "float32", allow_flex=True)
    assert flex_ops(blob) == ["FlexMatrixDeterminant"]


def test_tf_only_op_is_named():
    import keras
    import tensorflow as tf

    from kclassify.tflite.convert import convert

    class Det(keras.layers.Layer):
        def call(self, x):
            return tf.linalg.det(x)

    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, Det()(keras.layers.Permute((3, 1, 2))(inp)))
    with pytest.raises(ExportError, match="not TFLite builtins.*MatrixDeterminant.*--allow-flex"):
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


def test_cli_debug_quant_and_kit(digits_run, tmp_path):
    out = run_cli("export", digits_run, "--tflite", "--quant", "int8", "--debug-quant", "--out",
                  tmp_path / "m.tflite", "--kit", tmp_path / "device")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rmse/scale" in out.stdout and "head_dense" in out.stdout and "kit copied" in out.stdout
    assert (tmp_path / "device" / "evaluate.py").exists()
    assert "fully_quantize" not in out.stderr and "deprecated" not in out.stderr, out.stderr


def test_cli_max_drop(digits_run, tmp_path):
    out = run_cli("export", digits_run, "--tflite", "--quant", "int8", "--max-drop", "5", "--out", tmp_path / "b.tflite")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "held-out training images" in out.stdout and "max-drop met by attempt 1" in out.stdout
    assert json.loads((tmp_path / "b.json").read_text())["max_drop_search"]["chosen_attempt"] == 1
    bad = run_cli("export", digits_run, "--tflite", "--quant", "float16", "--max-drop", "0.5")
    assert bad.returncode == 2 and "--max-drop applies to calibrated modes" in bad.stderr


def test_cli_model_file_that_is_not_a_model(tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_text("hello")
    out = run_cli("evaluate", fake, "--data", "digits")
    assert out.returncode == 2 and "not a loadable Keras model" in out.stderr and "Traceback" not in out.stderr
    missing = run_cli("export", tmp_path / "nope.keras", "--tflite")
    assert missing.returncode == 2 and "model not found" in missing.stderr
    nomatch = run_cli("export", tmp_path / "nope.keras", "--tflite", "--quant", "sideways")
    assert nomatch.returncode == 2 and "16x8" in nomatch.stderr
    assert missing.returncode == 2 and "model not found" in missing.stderr


def test_cli_data_path_that_does_not_exist(tmp_path):
    out = run_cli("fit", "cifar10_cpu", "--set", f"data.path={tmp_path}/missing", "--out", tmp_path / "r")
    assert out.returncode == 2 and "data path does not exist" in out.stderr and "Traceback" not in out.stderr


def test_int8_xnnpack_mode_keeps_hard_swish_float_and_stays_in_the_delegate(tmp_path):
    """XNNPACK has no int8 HARD_SWISH: in plain int8 each one splits the graph; the int8-xnnpack
    mode keeps them float (dequantize/quantize around) and the delegate takes everything."""
    from kclassify.tflite.convert import convert
    from kclassify.kit import kitlib
    from kclassify.models import build_model

    model = build_model("mobilenet_v3_small", 10, (32, 32, 3), cifar_stem=True)
    calib = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    reports = {}
    for mode in ("int8", "int8-xnnpack"):
        path = tmp_path / f"{mode}.tflite"
        path.write_bytes(convert(model, mode, calib))
        reports[mode] = kitlib.delegate_report(path)
    assert reports["int8"]["not_delegated"].get("HARD_SWISH", 0) >= 10
    assert set(reports["int8-xnnpack"]["not_delegated"]) <= {"QUANTIZE", "SOFTMAX"}, reports
    assert reports["int8-xnnpack"]["partitions"] <= 2


def test_resnet20_int8_runs_in_xnnpack_whole(tmp_path):
    """The option-A shortcut is one CONV_2D, so every conv/add/pool of int8 ResNet-20 is
    delegated (the stock-layer version left 18 ops out in 6 partitions and was slow)."""
    from kclassify.tflite.convert import convert
    from kclassify.kit import kitlib
    from kclassify.models import build_model

    model = build_model("resnet20", 10, (32, 32, 3))
    calib = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    path = tmp_path / "r20.tflite"
    path.write_bytes(convert(model, "int8", calib))
    report = kitlib.delegate_report(path)
    assert set(report["not_delegated"]) <= {"QUANTIZE", "SOFTMAX"}, report
    assert report["delegated"] >= 30


def test_input_size_resizes_inside_the_graph(digits_run, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from kclassify.commands.export import ExportJob

    rep = ExportJob(digits_run, input_size=16).export("int8", tmp_path / "m16.tflite")
    assert rep["input"]["shape"] == [None, 16, 16, 1] and "in the graph" in rep["input"]["resize"]
    ops = {op["op_name"] for op in Interpreter(model_path=rep["file"])._get_ops_details()}
    assert "RESIZE_BILINEAR" in ops
    assert rep["agreement"] >= 0.95 and rep["tflite"]["top1"] >= 0.9
