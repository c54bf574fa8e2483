"""The fast-training stack (issue 11): the patch-whitening stem, Dirac init, frozen-scale BatchNorm
with a bias learning-rate multiplier, alternating flip, the airbench networks' sizes."""
import numpy as np
import pytest

from kclassify.models import build_model
from kclassify.recipe import validate


def test_whitening_filters_whiten_training_patches():
    """Covariance of the stem's outputs (first half of the filters, no bias) on the training
    patches is the identity, where the eigenvalues are large against eps."""
    import keras

    from kclassify.layers.whitening import PatchWhitening, patch_covariance

    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 16, 16, 3))
    images = base + 0.8 * np.roll(base, 1, axis=1) + 0.5 * base[..., ::-1]  # correlated pixels and channels
    layer = PatchWhitening(2, channels=3, eps=1e-8)
    layer.build((None, 16, 16, 3))
    layer.adapt(images)
    kernel = layer.kernel.numpy()
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])  # the negatives
    out = keras.ops.convert_to_numpy(keras.ops.conv(images.astype("float32"), kernel[..., :12], padding="valid"))
    flat = out.reshape(-1, 12).astype(np.float64)
    np.testing.assert_allclose(flat.T @ flat / len(flat), np.eye(12), atol=2e-3)
    cov = patch_covariance(images, 2)
    assert cov.shape == (12, 12) and np.allclose(cov, cov.T)
    assert not layer.kernel.trainable and layer.bias.trainable


def test_whitening_stem_is_saved_and_converts_to_one_conv(tmp_path):
    import keras

    from kclassify.tflite.convert import convert
    from kclassify.layers.whitening import init_whitening

    model = build_model("airbench93", 10, (32, 32, 3))
    images = np.random.default_rng(1).integers(0, 255, (64, 32, 32, 3)).astype(np.uint8)
    init_whitening(model, images)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again.get_layer("stem_whiten").kernel.numpy(),
                                  model.get_layer("stem_whiten").kernel.numpy())
    from ai_edge_litert.interpreter import Interpreter

    (tmp_path / "m.tflite").write_bytes(convert(model, "float32"))
    ops = [op["op_name"] for op in Interpreter(model_path=str(tmp_path / "m.tflite"))._get_ops_details()]
    assert ops.count("CONV_2D") == 7 and not any(o.startswith("Flex") for o in ops)


def test_dirac_init_is_the_identity_where_shapes_allow():
    import keras

    from kclassify.models.init import dirac_init

    model = build_model("airbench93", 10, (32, 32, 3))
    assert dirac_init(model) == 6  # every 3x3 conv of the groups; not the 2x2 whitening stem
    conv = model.get_layer("stage1_conv1")  # 24 -> 64
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 24)).astype("float32")
    y = keras.ops.convert_to_numpy(keras.ops.conv(x, conv.kernel, padding="same"))
    np.testing.assert_allclose(y[..., :24], x, atol=1e-6)  # the first in_channels filters pass through
    assert np.abs(y[..., 24:]).sum() > 0


def test_bn_frozen_scale_and_bias_learning_rate_multiplier():
    from kclassify.train.setup import fit_setup
    from kclassify.train.optim import make_optimizer

    recipe = validate({"train": {"bn_freeze_scale": True, "bn_bias_lr_mult": 64, "lr": 0.1, "momentum": 0.0,
                                 "weight_decay": 0.0, "schedule": "constant"}})
    model = build_model("airbench93", 10, (32, 32, 3))
    mult = fit_setup(model, recipe.train)
    bn = model.get_layer("stage1_bn1")
    assert not bn.gamma.trainable and bn.beta.trainable
    assert all(v.path.split("/")[-1] != "gamma" for v in model.trainable_variables)
    opt = make_optimizer(recipe.train, 1, model, mult)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt.apply_gradients([(np.ones(v.shape, "float32"), v) for v in model.trainable_variables])
    for v in model.trainable_variables:
        expected = 0.1 * (64.0 if v.path.endswith("beta") else 1.0)
        np.testing.assert_allclose(before[v.path] - v.numpy(), expected, rtol=1e-4)


def test_alternating_flip_mirrors_each_image_in_exactly_one_of_two_consecutive_epochs():
    from kclassify.data.pipeline import BatchPlan, training_stream
    from kclassify.data.sources import Split

    n, batch, spe = 64, 16, 4
    images = np.zeros((n, 1, 2, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # left pixel: the image's index; right pixel 255
    images[:, 0, 1, 0] = 255
    split = Split(images, np.zeros(n, np.int32))
    stream = training_stream(split, 1, BatchPlan(split.labels, batch, spe, seed=5), flip="alternate")
    mirrored = {}  # epoch -> set of mirrored image indices
    for step, (x, _) in enumerate(stream.take(4 * spe)):
        x = x.numpy()[:, 0, :, 0]
        flipped = x[:, 0] == 255
        index = np.where(flipped, x[:, 1], x[:, 0]).astype(int)
        mirrored.setdefault(step // spe, set()).update(index[flipped].tolist())
    everyone = set(range(n))
    for epoch in range(3):
        assert mirrored[epoch] ^ mirrored[epoch + 1] == everyone  # each in exactly one of the two
        assert not mirrored[epoch] & mirrored[epoch + 1]
    assert 0.3 < len(mirrored[0]) / n < 0.7  # at random in the first


def _conv_params(cin, cout, k=3, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


@pytest.mark.parametrize("name, widths", [("airbench93", (64, 128, 128)), ("airbench94", (64, 256, 256)),
                                         ("airbench95", (128, 384, 384))])
def test_airbench_parameter_and_mac_counts_are_our_arithmetic(name, widths):
    from kclassify.commands.profile import profile_model

    model = build_model(name, 10, (32, 32, 3))
    w1, w2, w3 = widths
    convs = [(24, w1), (w1, w1), (w1, w2), (w2, w2), (w2, w3), (w3, w3)]
    params = _conv_params(3, 24, 2, bias=True) + sum(_conv_params(a, b) for a, b in convs) + w3 * 10
    params += 2 * 2 * (w1 + w1 + w2 + w2 + w3 + w3)  # BN: gamma, beta, moving mean and variance
    assert model.count_params() == params
    # 2x2 valid conv 32 -> 31; each group: conv at its input size, pool (floor) 31 -> 15 -> 7 -> 3
    sizes = [31, 15, 15, 7, 7, 3]
    macs = 31 * 31 * 12 * 24 + sum(s * s * 9 * a * b for s, (a, b) in zip(sizes, convs)) + w3 * 10
    assert profile_model(model)["macs"] == macs
    if name == "airbench94":
        assert abs(macs - 118e6) / 118e6 < 0.01  # "about 118M MACs per image" (the issue, the paper)
    if name == "airbench95":  # its header: 1.39 PFLOP for 15 epochs of 50,000 images at 6 FLOP per MAC
        assert abs(macs - 1.39e15 / (15 * 50000 * 6)) / macs < 0.03


@pytest.mark.slow  # 15-30 s of the fast tier (two workers on 2 cores)
def test_the_recipe_evaluation_is_what_evaluate_run_reproduces(tmp_path):
    """evaluate.tta in the recipe: fit's final report and `kclassify evaluate RUN` give the same
    figure; --tta overrides it."""
    import json

    import kclassify
    from conftest import tiny_recipe

    recipe = tiny_recipe(tmp_path, train={"epochs": 1}, evaluate={"tta": "mirror_translate"})
    run = kclassify.fit(recipe, echo=lambda *a: None)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert metrics["val_tta"]["views"] == 6
    again = kclassify.evaluate(run.dir, echo=lambda *a: None)
    assert again["tta"] == "mirror_translate" and again["top1"] == pytest.approx(metrics["val_tta"]["top1"])
    plain = kclassify.evaluate(run.dir, tta="none", echo=lambda *a: None)
    assert plain["top1"] == pytest.approx(metrics["val"]["top1"])
    # `kclassify export --tta`: one .tflite that averages the six views, measured like any export
    from conftest import run_cli
    from ai_edge_litert.interpreter import Interpreter

    out = run_cli("export", run.dir, "--tflite", "--quant", "float32", "--tta", "mirror_translate",
                  "--out", tmp_path / "tta.tflite")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TTA mirror_translate" in out.stdout
    rep = json.loads((tmp_path / "tta.json").read_text())
    assert rep["tflite"]["top1"] == pytest.approx(again["top1"], abs=0.005)
    ops = {op["op_name"] for op in Interpreter(model_path=str(tmp_path / "tta.tflite"))._get_ops_details()}
    assert "CONV_2D" in ops and not any(o.startswith("Flex") or o == "CUSTOM" for o in ops)


def _airbench_muon_step(weight, grad, buf, lr, momentum):
    """airbench94_muon's Muon step, in numpy and PyTorch's (cout, cin, kh, kw) layout."""
    buf = momentum * buf + grad
    g = grad + momentum * buf
    weight = weight * np.sqrt(len(weight)) / np.linalg.norm(weight)
    x = g.reshape(len(g), -1)
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(5):
        a = x @ x.T
        x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
    return weight - lr * x.reshape(g.shape), buf


def test_muon_steps_conv_filters_as_airbench_and_leaves_the_rest_to_sgd():
    """train.optimizer muon: every trainable conv kernel goes to ConvMuon and takes airbench's
    step (momentum, Nesterov, norm sqrt(filters), Newton-Schulz of the flattened filters), three
    steps in a row; the BatchNorm biases and the head take SGD's step with their multipliers."""
    import keras

    from kclassify.train.setup import fit_setup
    from kclassify.train.muon import ConvMuon, muon_variables
    from kclassify.train.optim import make_optimizer

    recipe = validate({"train": {"optimizer": "muon", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
                                 "schedule": "constant", "bn_freeze_scale": True, "bn_bias_lr_mult": 4,
                                 "muon": {"lr": 0.3, "momentum": 0.6}}})
    model = build_model("airbench93", 10, (32, 32, 3))
    opt = make_optimizer(recipe.train, 1, model, fit_setup(model, recipe.train))
    kernels = {v.path for v in muon_variables(model)}
    assert len(kernels) == 6 and all(len(model.get_layer(p.split("/")[0]).kernel.shape) == 4 for p in kernels)
    assert not any("whiten" in p for p in kernels)  # the frozen whitening stem is not trained at all
    opt.build(model.trainable_variables)
    assert {v.path for v in model.trainable_variables if isinstance(opt._optimizer_map(v), ConvMuon)} == kernels
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables] for _ in range(3)]
    start = {v.path: v.numpy().copy() for v in model.trainable_variables}
    ref = {p: (np.transpose(start[p], (3, 2, 0, 1)).astype("float64"), 0.0) for p in kernels}
    for step in grads:
        opt.apply_gradients(zip(step, model.trainable_variables))
        for v, g in zip(model.trainable_variables, step):
            if v.path in ref:
                ref[v.path] = _airbench_muon_step(*ref[v.path][:1], np.transpose(g, (3, 2, 0, 1)), ref[v.path][1], 0.3, 0.6)
    for i, v in enumerate(model.trainable_variables):
        if v.path in kernels:
            np.testing.assert_allclose(np.transpose(v.numpy(), (3, 2, 0, 1)), ref[v.path][0], atol=2e-4)
        else:  # plain SGD without momentum: three steps of lr x multiplier x gradient
            mult = 4.0 if v.path.endswith("beta") else 1.0
            np.testing.assert_allclose(start[v.path] - v.numpy(), 0.1 * mult * sum(g[i] for g in grads),
                                       rtol=1e-3, atol=1e-5)
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).__class__.__name__ == "MuonSGD"
    # a segment that freezes a variable (the whitening bias after whiten_bias_epochs) steps the rest
    rest = model.trainable_variables[1:]
    before = rest[0].numpy().copy()
    opt.apply_gradients([(np.ones(v.shape, "float32"), v) for v in rest])
    assert int(opt.iterations.numpy()) == 4 and not np.allclose(before, rest[0].numpy())


def test_muon_runs_newton_schulz_in_the_runs_bfloat16_and_stays_airbenchs_step():
    """train.muon.ns_dtype auto: the iteration runs in bfloat16 when the run computes in it (half
    its float32 cost on a CPU), float32 otherwise; the step in bfloat16 stays airbench's float64
    step within bfloat16's rounding, and the optimizer's config keeps the choice."""
    import keras

    from kclassify.train.setup import fit_setup
    from kclassify.train.muon import ConvMuon, muon_variables, ns_dtype
    from kclassify.train.optim import make_optimizer

    recipe = validate({"train": {"optimizer": "muon", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
                                 "schedule": "constant", "muon": {"lr": 0.3, "momentum": 0.6}}})
    assert ns_dtype(recipe.train.muon) == "float32"  # the tests' float32 policy
    assert ns_dtype(recipe.train.muon.model_copy(update={"ns_dtype": "bfloat16"})) == "bfloat16"
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        assert ns_dtype(recipe.train.muon) == "bfloat16"
        model = build_model("airbench93", 10, (32, 32, 3))
        opt = make_optimizer(recipe.train, 1, model, fit_setup(model, recipe.train))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    muon = next(o for o in opt.optimizers if isinstance(o, ConvMuon))
    assert muon.ns_dtype == "bfloat16" and keras.optimizers.deserialize(
        keras.optimizers.serialize(muon)).ns_dtype == "bfloat16"
    kernel = muon_variables(model)[-1]
    opt.build(model.trainable_variables)
    start = np.transpose(kernel.numpy(), (3, 2, 0, 1)).astype("float64")
    grad = np.random.default_rng(0).normal(size=kernel.shape).astype("float32")
    grads = [grad if v is kernel else np.zeros(v.shape, "float32") for v in model.trainable_variables]
    opt.apply_gradients(zip(grads, model.trainable_variables))
    ref, _ = _airbench_muon_step(start, np.transpose(grad, (3, 2, 0, 1)), 0.0, 0.3, 0.6)
    scaled = start * np.sqrt(len(start)) / np.linalg.norm(start)
    got_step = np.transpose(kernel.numpy(), (3, 2, 0, 1)) - scaled
    ref_step = ref - scaled
    assert np.linalg.norm(got_step - ref_step) < 0.06 * np.linalg.norm(ref_step)  # 0.026 here; a wrong step: ~1
    assert np.abs(got_step - ref_step).max() > 1e-6  # bfloat16 did round: the iteration did not run in float32


def test_muon_recipe_trains_and_its_checkpoint_holds_the_optimizer_state(tmp_path):
    """A fit with train.optimizer muon learns the digits; its checkpoint (what a resume loads)
    deserializes the MuonSGD with every Muon momentum and SGD slot, equal to the trained ones."""
    import json

    import keras

    from conftest import tiny_recipe
    from kclassify.commands.fit import fit

    recipe = tiny_recipe(tmp_path, train={"optimizer": "muon", "epochs": 3, "lr": 0.05, "muon": {"lr": 0.1}},
                         model={"name": "resnet20", "params": {"width_mult": 0.5}})
    run = fit(recipe, echo=lambda *a: None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["top1"] > 0.8, metrics["val"]
    state = json.loads((run / "ckpt" / "state.json").read_text())
    saved = keras.models.load_model(run / "ckpt" / state["checkpoints"][-1]["file"])
    opt = saved.optimizer
    assert type(opt).__name__ == "MuonSGD" and [type(o).__name__ for o in opt.optimizers] == ["ConvMuon", "SGD"]
    from kclassify.train.muon import muon_variables

    momenta = opt.optimizers[0].variables[1:]  # after its iteration counter: one momentum per conv kernel
    assert int(opt.iterations.numpy()) == state["step"] and len(momenta) == len(muon_variables(saved)) == 19
    assert all(np.abs(v.numpy()).sum() > 0 for v in momenta)  # the trained momenta, not fresh zeros


def test_tta_on_the_least_sure_share_changes_only_those_images():
    """evaluate.tta_fraction: the views run on the images the plain view is least sure of; the
    others keep their plain probabilities; a fraction of 1 is the full TTA."""
    import keras

    from kclassify.data.sources import Split
    from kclassify.inference import evaluate_model, predict
    from kclassify.tta import least_sure, preset_views

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255.0), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, activation="softmax")])
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), rng.integers(0, 5, 40).astype(np.int32))
    views, names = preset_views("mirror_translate"), list("abcde")
    plain = predict(model, split)
    full = evaluate_model(model, split, names, views=views)[1]
    report, part = evaluate_model(model, split, names, views=views, fraction=0.25)
    chosen = least_sure(plain, 0.25)
    assert len(chosen) == 10 and np.all(plain.max(1)[chosen].max() <= np.delete(plain.max(1), chosen))
    np.testing.assert_allclose(part[chosen], full[chosen], atol=1e-6)
    others = np.setdiff1d(np.arange(40), chosen)
    np.testing.assert_array_equal(part[others], plain[others])
    assert report["top1"] == np.mean(part.argmax(1) == split.labels)
    np.testing.assert_allclose(evaluate_model(model, split, names, views=views, fraction=1.0)[1], full, atol=1e-6)
    assert not np.allclose(part[chosen], plain[chosen])  # the views did change them
