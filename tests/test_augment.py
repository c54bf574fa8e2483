"""Augmentation ops, policies, erasing and mixing: every registered augmentation eagerly and in
tf.data, on one image and on a batch; PIL agreement; statistics where randomness is the point.
Fixed seeds make every statistical check deterministic; tolerances are >= 4 sampling sds."""
import numpy as np
import pytest
import tensorflow as tf

from kclassify.augment import mixing, ops, policies
from kclassify.augment.erasing import cutout, random_erasing
from kclassify.augment.registry import AUGMENTS, chain


@pytest.fixture(autouse=True)
def _seed():
    tf.random.set_seed(0)


def images(n=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, c), dtype=np.uint8)


@pytest.mark.parametrize("c", [3, 1])
@pytest.mark.parametrize("name", AUGMENTS.names())
def test_registered_augmentation_runs_eagerly_and_in_tf_data(name, c):
    fn = AUGMENTS.get(name)()
    x = images(4, c)
    for out, like in [(fn(x[0]), x[0]), (fn(x), x)]:  # one image, a batch
        assert out.dtype == tf.uint8 and out.shape == like.shape
    per_image = tf.data.Dataset.from_tensor_slices(x).map(fn).batch(4)
    per_batch = tf.data.Dataset.from_tensor_slices(x).batch(2).map(fn)
    for ds, shape in [(per_image, (4, 32, 32, c)), (per_batch, (2, 32, 32, c))]:
        assert ds.element_spec.shape[1:] == shape[1:]
        for out in ds:
            assert out.dtype == tf.uint8 and out.shape[1:] == shape[1:]


@pytest.mark.parametrize("name", AUGMENTS.names())
def test_each_image_draws_its_own_randomness(name):
    # 64 copies of one image; every augmentation has enough randomness that identical results
    # for all 64 are practically impossible (grayscale at p=0.2: 0.8^64 = 6e-7).
    fn = AUGMENTS.get(name)()
    same = np.repeat(images(1), 64, axis=0)
    on_batch = fn(same).numpy()
    on_images = np.stack(list(tf.data.Dataset.from_tensor_slices(same).map(fn).as_numpy_iterator()))
    for out in (on_batch, on_images):
        assert len({o.tobytes() for o in out}) > 1


def test_unknown_policy_and_augmentation_fail_at_build_time():
    with pytest.raises(KeyError):
        AUGMENTS.get("autoaugment")(policy="cifar100")
    with pytest.raises(Exception, match="did you mean 'cutout'"):
        AUGMENTS.get("cutuot")
    assert chain([]) is None
    assert chain([("cutout", {"length": 8}), ("grayscale", {})])(images(1)[0]).shape == (32, 32, 3)


def test_pixel_ops_match_pil():
    Image = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps

    x = images(1, seed=3)[0]
    pil = Image.fromarray(x)
    exact = [(ops.equalize(x), ImageOps.equalize(pil)), (ops.autocontrast(x), ImageOps.autocontrast(pil)),
             (ops.invert(x), ImageOps.invert(pil)), (ops.solarize_threshold(x, 100), ImageOps.solarize(pil, 100)),
             (ops.posterize_bits(x, 5), ImageOps.posterize(pil, 5)),
             (ops.rotate_degrees(x, 30.0), pil.rotate(30, fillcolor=(128,) * 3)),
             (ops.transform(x, [1, 0, 5, 0, 1, 0, 0, 0]), pil.transform((32, 32), Image.AFFINE, (1, 0, 5, 0, 1, 0),
                                                                         fillcolor=(128,) * 3))]
    for ours, ref in exact:
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    for level, factor in [(0.0, 0.1), (10.0, 1.9)]:
        for op, enhancer in [(ops.color, ImageEnhance.Color), (ops.contrast, ImageEnhance.Contrast),
                             (ops.brightness, ImageEnhance.Brightness), (ops.sharpness, ImageEnhance.Sharpness)]:
            diff = np.abs(np.asarray(op(x, level), int) - np.asarray(enhancer(pil).enhance(factor), int))
            assert diff.max() <= 2  # PIL rounds its blends in fixed point; we round in float


def test_batch_op_equals_the_op_on_each_image():
    # Deterministic ops with a level per image: the batch path is the single-image path, stacked.
    x = images(6, seed=4)
    levels = tf.constant([0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    for name in ["AutoContrast", "Equalize", "Solarize", "Posterize", "Contrast", "Color", "Brightness", "Sharpness"]:
        batch = ops.OPS[name](x, levels).numpy()
        single = np.stack([ops.OPS[name](x[i], levels[i]).numpy() for i in range(6)])
        np.testing.assert_array_equal(batch, single, err_msg=name)
    index = tf.constant([8, 15, 9, 7, 0, 15])  # 15 = len(OP_NAMES): left as is
    out = ops.apply_ops(x, index, levels).numpy()
    for i in range(6):
        want = x[i] if index[i] == 15 else ops.apply_op(x[i], index[i], levels[i]).numpy()
        np.testing.assert_array_equal(out[i], want)


def test_policies_are_the_papers_tables():
    for name, table in policies.POLICIES.items():
        index, prob, level = policies.policy_tables(name)
        assert index.shape == (25, 2) and prob.numpy().max() <= 1 and level.numpy().max() <= 9
    assert policies.CIFAR10[0] == (("Invert", 0.1, 0), ("Contrast", 0.2, 6))
    assert policies.SVHN[-1] == (("ShearX", 0.7, 2), ("Invert", 0.1, 0))
    assert policies.IMAGENET[0] == (("Posterize", 0.4, 8), ("Rotate", 0.6, 9))


# A toy policy whose outcomes on a constant image (value 37 = 0b00100101) are all distinct:
# sub-policy A: Invert (p 0.2) -> 218, then Posterize 4 bits (p 0.7) -> 32 or (after Invert) 208;
# sub-policy B: Brightness level 0 = factor 0.1 (p 0.4) -> 4.
TOY = [(("Invert", 0.2, 0), ("Posterize", 0.7, 10)), (("Brightness", 0.4, 0), ("Identity", 1.0, 0))]
TOY_EXPECTED = {37: 0.5 * 0.8 * 0.3 + 0.5 * 0.6, 218: 0.5 * 0.2 * 0.3, 32: 0.5 * 0.8 * 0.7,
                208: 0.5 * 0.2 * 0.7, 4: 0.5 * 0.4}


@pytest.mark.parametrize("placement", ["batch", "image"])
def test_autoaugment_draws_sub_policies_and_ops_with_their_probabilities(placement):
    n = 4000
    x = np.full((n, 4, 4, 3), 37, np.uint8)
    fn = lambda im: policies.autoaugment(im, TOY)  # noqa: E731
    if placement == "batch":
        out = fn(x).numpy()
    else:
        out = np.stack(list(tf.data.Dataset.from_tensor_slices(x[:2000]).map(fn).as_numpy_iterator()))
    values = out[:, 0, 0, 0]
    assert set(np.unique(values)) <= set(TOY_EXPECTED)
    for value, p in TOY_EXPECTED.items():
        sd = np.sqrt(p * (1 - p) / len(values))
        assert abs(np.mean(values == value) - p) < 4 * sd, (value, np.mean(values == value), p)


def test_randaugment_picks_ops_uniformly_per_image():
    # N=1 on a batch of one image (values 50..199, so AutoContrast changes it too): of the 14
    # ops only Identity leaves it as is. 2800 images: Identity's share 1/14 has sd 0.005.
    x = np.repeat(images(1, seed=5) // 2 + 50, 2800, axis=0)
    out = policies.randaugment(x, n=1, m=9).numpy()
    unchanged = np.mean([np.array_equal(o, x[0]) for o in out])
    assert abs(unchanged - 1 / 14) < 0.025


def test_cutout_holes_are_clipped_squares_centered_anywhere():
    n, length = 2000, 16
    out = cutout(np.full((n, 32, 32, 1), 255, np.uint8), n_holes=1, length=length, fill=0).numpy()
    holes = out[..., 0] == 0
    area = holes.mean(axis=(1, 2))
    # Center uniform over the 32 rows, rows [c - 8, c + 8) clipped to the image: mean covered
    # rows = E[min(c + 8, 32) - max(c - 8, 0)], and the same for columns, independently.
    rows = np.mean([min(c + 8, 32) - max(c - 8, 0) for c in range(32)])
    assert abs(area.mean() - rows**2 / 1024) < 0.01  # area sd about 0.06 / sqrt(2000) = 0.0013
    assert area.max() == length**2 / 1024 and area.min() < 0.1  # full squares and clipped ones
    ys, xs = np.nonzero(holes[0])
    assert holes[0].sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)  # a rectangle


def test_random_erasing_probability_and_area():
    n = 2000
    out = random_erasing(np.full((n, 32, 32, 3), 255, np.uint8), prob=0.5, value=0).numpy()
    area = (out[..., 0] == 0).mean(axis=(1, 2))
    erased = area > 0
    assert abs(erased.mean() - 0.5) < 0.045  # sd 0.011
    # Sides are rounded, so the area can stray a little outside [0.02, 0.4].
    assert area[erased].min() >= 0.015 and area[erased].max() <= 0.45
    assert abs(area[erased].mean() - 0.21) < 0.02  # uniform area in [0.02, 0.4]: mean 0.21
    noisy = random_erasing(np.full((4, 32, 32, 3), 255, np.uint8), prob=1.0).numpy()
    assert len(np.unique(noisy)) > 100  # "random" fills with random pixel values


def mix_pair(fn, alpha, n=1500):
    """Batches of two images, all 0 and all 1, labels one-hot 0 and 1: returns the weight of
    image 0's own label and the share of image 0's pixels that still come from image 0."""
    x = tf.constant(np.stack([np.zeros((8, 8, 1)), np.ones((8, 8, 1))]), tf.float32)
    y = tf.one_hot([0, 1], 2)
    ds = tf.data.Dataset.range(n).map(lambda _: fn(x, y, alpha))
    weight, own = [], []
    for xb, yb in ds.as_numpy_iterator():
        weight.append(yb[0, 0])
        own.append(1 - xb[0].mean())
    return np.array(weight), np.array(own)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_follows_beta(alpha):
    lam, own = mix_pair(mixing.mixup, alpha)
    np.testing.assert_allclose(own, lam, atol=1e-6)  # pixels and labels mixed by the same lambda
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); with 1500 draws the mean's sd is
    # <= 0.008 and the variance's relative sd is about 4%.
    assert abs(lam.mean() - 0.5) < 0.035
    assert abs(lam.var() / (1 / (4 * (2 * alpha + 1))) - 1) < 0.2
    stats = pytest.importorskip("scipy.stats")
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 0.001


def test_sample_beta_from_gammas():
    stats = pytest.importorskip("scipy.stats")
    draws = mixing.sample_beta(0.4, [5000]).numpy()
    assert stats.kstest(draws, stats.beta(0.4, 0.4).cdf).pvalue > 0.001


def test_cutmix_label_weight_is_the_pasted_area():
    weight, own = mix_pair(mixing.cutmix, 1.0, n=600)
    np.testing.assert_allclose(weight, own, atol=1e-6)  # exactly, after clipping
    assert weight.min() < 0.6
    # Clipping and the paper's even box sides (2 * (side // 2)) only shrink the box, so the kept
    # share is at least the drawn lambda (mean 0.5); on an 8-pixel side they shrink it a lot.
    assert 0.5 < weight.mean() < 0.85


def test_mix_batch_switches_and_skips():
    x = tf.constant(np.stack([np.zeros((8, 8, 1)), np.ones((8, 8, 1))]), tf.float32)
    y = tf.one_hot([0, 1], 2)
    kinds = []
    for _ in range(300):
        xb, yb = mixing.mix_batch(x, y, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.3)
        values = np.unique(xb[0].numpy())
        kinds.append("cutmix" if set(values) <= {0.0, 1.0} else "mixup")
    assert abs(kinds.count("cutmix") / 300 - 0.3) < 0.11  # sd 0.026
    xb, yb = mixing.mix_batch(x, y, mixup_alpha=1.0, prob=0.0)
    np.testing.assert_array_equal(xb.numpy(), x.numpy())
    assert mixing.batch_mixer() is None
    xb, yb = mixing.batch_mixer(cutmix_alpha=1.0)(x, y)
    np.testing.assert_allclose(yb.numpy().sum(axis=1), 1.0, rtol=1e-6)
