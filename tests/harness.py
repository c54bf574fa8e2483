"""One harness for every layer and model kclassify defines (keras-hub's test_case.py is the
pattern): gradients reach every weight, the config round-trips, a .keras file reloads with the
same outputs (here, and in a fresh process after `import kclassify`), and the float32 .tflite is
builtins-only with Keras' outputs."""
import json
import subprocess
import sys

import numpy as np

from conftest import ROOT


def check_gradients(model, x, num_classes):
    """A training step's gradients reach every trainable weight and are finite."""
    import keras
    import tensorflow as tf

    with tf.GradientTape() as tape:
        probs = model(x, training=True)
        targets = np.eye(num_classes)[np.arange(len(x)) % num_classes]
        loss = keras.losses.categorical_crossentropy(targets, probs)
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not missing, f"no gradient reaches {missing[:3]}"
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    return probs


def check_config(model):
    """from_config(get_config()) rebuilds the same structure (layers, weight shapes)."""
    clone = model.__class__.from_config(model.get_config())
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]


def check_keras_file(model, x, path, atol=1e-6):
    """Saved and loaded here with the same outputs; the inputs and outputs are written beside the
    file for check_fresh_process."""
    import keras

    model.save(path)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), expected, atol=atol)
    np.savez(path.with_suffix(".npz"), x=x, y=expected)


def check_fresh_process(paths, atol=1e-5):
    """Each .keras file (with its .npz from check_keras_file) loads in a new Python after only
    `import kclassify, keras`, giving the same outputs; the optimizer and loss classes survive."""
    code = ("import json, sys, numpy as np, kclassify, keras\n"
            "out = {}\n"
            "for p in json.loads(sys.argv[1]):\n"
            "    m = keras.models.load_model(p)\n"
            "    d = np.load(p[:-len('.keras')] + '.npz')\n"
            "    err = float(np.abs(m.predict(d['x'], verbose=0) - d['y']).max())\n"
            "    loss = getattr(m, 'loss', None)\n"
            "    out[p] = [err, type(getattr(m, 'optimizer', None)).__name__, type(loss).__name__]\n"
            "print(json.dumps(out))")
    res = subprocess.run([sys.executable, "-c", code, json.dumps([str(p) for p in paths])], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    found = json.loads(res.stdout.strip().splitlines()[-1])
    bad = {p: e for p, (e, *_) in found.items() if not e <= atol}
    assert not bad, bad
    return found


def check_tflite(model, x, path, atol=1e-4):
    """A builtins-only float32 .tflite whose outputs on uint8 pixels match Keras'."""
    from ai_edge_litert.interpreter import Interpreter

    from kclassify.kit import kitlib
    from kclassify.tflite.convert import convert

    path.write_bytes(convert(model, "float32"))
    ops = {op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()}
    assert not any(o.startswith("Flex") or o == "CUSTOM" for o in ops), ops
    pixels = np.clip(x, 0, 255).astype(np.uint8)
    np.testing.assert_allclose(kitlib.Classifier(path).predict(pixels),
                               model.predict(pixels.astype("float32"), verbose=0), atol=atol)
