"""Profiles: MACs per layer kind against hand counts and the papers' figures, MicroNet score,
JSON output, .keras files, the models table."""
import json

import numpy as np
import pytest

from kclassify.commands.profile import micronet_score, models_table, profile_model, run_profile

# (input size, classes, MACs of the paper, tolerance)
PAPER_MACS = {"resnet20": (32, 10, 41e6, 0.02), "resnet50": (224, 1000, 4.1e9, 0.01),
              "mobilenet_v3_large": (224, 1000, 219e6, 0.01), "mobilenet_v3_small": (224, 1000, 56e6, 0.02),
              "wrn28_10": (32, 100, 5.25e9, 0.01), "squeezenet1_0": (224, 1000, 0.82e9, 0.01)}


def test_macs_are_counted_per_layer_kind():
    import keras
    from keras import layers

    from kclassify.models.blocks import squeeze_excite

    x = inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(8, 3, padding="same", name="c")(x)                      # 8*8*8 * 9*4
    x = layers.Conv2D(8, 3, padding="same", groups=2, name="g")(x)            # 8*8*8 * 9*4
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", name="d")(x)     # 4*4*8 * 9
    x = squeeze_excite(x, 2, "b")                                             # 8*2 + 2*8 + 4*4*8
    x = layers.Dense(3, name="f")(layers.Flatten()(x))                        # 128*3
    p = profile_model(keras.Model(inputs, x))
    assert p["macs_by_kind"] == {"conv": 2 * 18432, "depthwise": 1152, "se": 16 + 16 + 128, "dense": 384}
    assert p["macs"] == sum(p["macs_by_kind"].values())
    assert p["params_trainable"] == p["params_total"]


@pytest.mark.parametrize("name", sorted(PAPER_MACS))
def test_macs_match_papers(name):
    size, classes, figure, tolerance = PAPER_MACS[name]
    macs = run_profile(name, size, classes, echo=lambda *a: None)["macs"]
    assert abs(macs - figure) / figure < tolerance, macs


def test_wrn28_10_micronet_score_is_the_reference():
    p = run_profile("wrn28_10", 32, 100, echo=lambda *a: None)
    assert p["micronet_score"] == pytest.approx(2.0, abs=0.01)
    assert micronet_score(36.5e6, 5.245e9) == pytest.approx(2.0, abs=1e-3)


def test_profile_prints_writes_json_and_reads_keras_files(tmp_path):
    from kclassify.models import build_model

    path = tmp_path / "m.keras"
    build_model("resnet20", 10, (32, 32, 3)).save(path)
    lines = []
    p = run_profile(str(path), json_out=tmp_path / "p.json", echo=lines.append)
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["params_trainable"] == p["params_trainable"] == 269_722
    assert saved["macs"] == p["macs"] and saved["activation_bytes"] > 0
    assert any(line.startswith("MicroNet") for line in lines) and any("269,722" in line for line in lines)


def test_activation_memory_is_sum_of_layer_outputs():
    import keras
    from keras import layers

    inputs = keras.Input((4, 4, 2))
    p = profile_model(keras.Model(inputs, layers.ReLU()(inputs)))
    assert p["activation_bytes"] == 2 * 4 * 4 * 2 * 4 and p["largest_activation_bytes"] == 128


def test_unknown_name_suggests_a_model():
    from kclassify.errors import KClassifyError

    with pytest.raises(KClassifyError, match="neither a registered model nor a file.*did you mean 'resnet20'"):
        run_profile("resnet-20", echo=lambda *a: None)


def test_models_table_lists_params_and_macs():
    rows = models_table(["resnet20", "squeezenet1_0"])
    by = {r["name"]: r for r in rows}
    assert by["resnet20"]["input_size"] == 32 and by["squeezenet1_0"]["input_size"] == 224
    assert by["squeezenet1_0"]["params"] == 1_248_424 and np.isclose(by["resnet20"]["macs"], 40.6e6, rtol=0.01)
