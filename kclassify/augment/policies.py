"""AutoAugment's learned policies and RandAugment, per image, computing only the chosen ops.

AutoAugment (Cubuk et al. 2019, appendix tables; same lists as torchvision's AutoAugmentPolicy
and DeepVoltaire/AutoAugment): each image gets one sub-policy drawn uniformly, and each of its
two ops runs with its own probability at its magnitude (level 0..9 of 10, see ops.py).
Ops without a magnitude carry level 0.

RandAugment (Cubuk et al. 2020): N ops drawn uniformly with replacement, per image, from the
paper's 14 transforms, each at the shared magnitude M (0..10, the reference code's scale).

Keras' RandAugment picks its ops once per batch and computes every candidate transform; here a
per-image tf.switch_case runs only the op that was drawn.
"""
import tensorflow as tf

from kclassify.augment.ops import OP_NAMES, apply_op, apply_ops

# (op, probability, level) pairs; each row is one sub-policy.
CIFAR10 = [
    (("Invert", 0.1, 0), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 0), ("Equalize", 0.9, 0)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 0), ("Equalize", 0.5, 0)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 0), ("AutoContrast", 0.4, 0)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 0)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 0), ("Equalize", 0.6, 0)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 0)),
    (("AutoContrast", 0.8, 0), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 0)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 0), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 0), ("Invert", 0.1, 0)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 0)),
]

SVHN = [
    (("ShearX", 0.9, 4), ("Invert", 0.2, 0)),
    (("ShearY", 0.9, 8), ("Invert", 0.7, 0)),
    (("Equalize", 0.6, 0), ("Solarize", 0.6, 6)),
    (("Invert", 0.9, 0), ("Equalize", 0.6, 0)),
    (("Equalize", 0.6, 0), ("Rotate", 0.9, 3)),
    (("ShearX", 0.9, 4), ("AutoContrast", 0.8, 0)),
    (("ShearY", 0.9, 8), ("Invert", 0.4, 0)),
    (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
    (("Invert", 0.9, 0), ("AutoContrast", 0.8, 0)),
    (("Equalize", 0.6, 0), ("Rotate", 0.9, 3)),
    (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
    (("ShearY", 0.8, 8), ("Invert", 0.7, 0)),
    (("Equalize", 0.9, 0), ("TranslateY", 0.6, 6)),
    (("Invert", 0.9, 0), ("Equalize", 0.6, 0)),
    (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
    (("Invert", 0.8, 0), ("TranslateY", 0.0, 2)),
    (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
    (("Invert", 0.6, 0), ("Rotate", 0.8, 4)),
    (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
    (("ShearX", 0.1, 6), ("Invert", 0.6, 0)),
    (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
    (("ShearY", 0.8, 4), ("Invert", 0.8, 0)),
    (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
    (("ShearY", 0.8, 5), ("AutoContrast", 0.7, 0)),
    (("ShearX", 0.7, 2), ("Invert", 0.1, 0)),
]

IMAGENET = [
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 0), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 0)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 0)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 0), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 0)),
    (("Equalize", 0.0, 0), ("Equalize", 0.8, 0)),
    (("Invert", 0.6, 0), ("Equalize", 1.0, 0)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 0)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 0)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 0)),
    (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
    (("Invert", 0.6, 0), ("Equalize", 1.0, 0)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)),
]

POLICIES = {"cifar10": CIFAR10, "svhn": SVHN, "imagenet": IMAGENET}

# The RandAugment paper's 14 transforms (no Invert).
RANDAUGMENT_OPS = ["Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize",
                   "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY"]


def policy_tables(policy):
    """(op indices, probabilities, levels), each [sub-policies, 2], for a policy name or list."""
    rows = POLICIES[policy] if isinstance(policy, str) else policy
    index = [[OP_NAMES.index(op) for op, _, _ in row] for row in rows]
    prob = [[p for _, p, _ in row] for row in rows]
    level = [[float(m) for _, _, m in row] for row in rows]
    return tf.constant(index, tf.int32), tf.constant(prob, tf.float32), tf.constant(level, tf.float32)


def autoaugment(images, policy="cifar10"):
    """One uniformly drawn sub-policy per image; each of its ops runs with its probability.
    Takes one HxWxC image or a BxHxWxC batch (every image its own draw)."""
    images = tf.convert_to_tensor(images)
    index, prob, level = policy_tables(policy)
    if images.shape.rank == 3:
        return _autoaugment_one(images, index, prob, level)
    b = tf.shape(images)[0]
    k = tf.random.uniform([b], 0, index.shape[0], tf.int32)
    for j in range(index.shape[1]):
        skip = tf.random.uniform([b]) >= tf.gather(prob[:, j], k)
        op = tf.where(skip, len(OP_NAMES), tf.gather(index[:, j], k))  # len(OP_NAMES): leave as is
        images = apply_ops(images, op, tf.gather(level[:, j], k))
    return images


def _autoaugment_one(image, index, prob, level):
    k = tf.random.uniform([], 0, index.shape[0], tf.int32)
    for j in range(index.shape[1]):
        image = tf.cond(tf.random.uniform([]) < prob[k, j],
                        lambda j=j, x=image: apply_op(x, index[k, j], level[k, j]),
                        lambda x=image: x)
    return image


def randaugment(images, n=2, m=9.0):
    """`n` ops drawn with replacement from RANDAUGMENT_OPS, per image, all at level `m`.
    Takes one HxWxC image or a BxHxWxC batch (every image its own draw)."""
    images = tf.convert_to_tensor(images)
    count = len(RANDAUGMENT_OPS)
    for _ in range(n):
        if images.shape.rank == 3:
            images = apply_op(images, tf.random.uniform([], 0, count, tf.int32), m, names=RANDAUGMENT_OPS)
        else:
            op = tf.random.uniform(tf.shape(images)[:1], 0, count, tf.int32)
            images = apply_ops(images, op, m, names=RANDAUGMENT_OPS)
    return images
