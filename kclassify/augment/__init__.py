"""Augmentation: on the host in tf.data (basic.py and the registered ops, random per image) or
inside the compiled train step in keras.ops (device.py). Importing the package imports neither,
so the JAX backend without TensorFlow reaches device.py without tf.data's modules."""
