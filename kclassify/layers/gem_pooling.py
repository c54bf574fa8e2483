"""Generalized-mean pooling (Radenovic et al. 2018), which Keras lacks: p = 1 is average
pooling, p -> infinity max pooling; p is learned."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kclassify")
class GeMPooling2D(keras.layers.Layer):
    """(mean over H, W of max(x, eps)^p)^(1/p) per channel, for NHWC input; p starts at `p`."""

    def __init__(self, p=3.0, eps=1e-6, trainable_p=True, **kwargs):
        super().__init__(**kwargs)
        self.p_init, self.eps, self.trainable_p = float(p), float(eps), bool(trainable_p)

    def build(self, input_shape):
        self.p = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.p_init),
                                 trainable=self.trainable_p, name="p")

    def call(self, x):
        x = ops.power(ops.maximum(x, self.eps), self.p)
        return ops.power(ops.mean(x, axis=(1, 2)), 1.0 / self.p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "p": self.p_init, "eps": self.eps, "trainable_p": self.trainable_p}
