"""Patch-whitening stem (airbench, after Page): a k x k convolution whose filters are the
eigenvectors of the covariance of the training images' k x k patches, each scaled by
1/sqrt(eigenvalue + eps), together with their negatives (so a following GELU or ReLU keeps both
signs). Its kernel is frozen; `adapt` computes it from training images when a run starts, and it
is saved inside the model, so inference and TFLite see a plain CONV_2D with constant weights.
The bias trains (for the first `train.whiten_bias_epochs` epochs of the recipe)."""
import keras
import numpy as np


@keras.saving.register_keras_serializable(package="kclassify")
class PatchWhitening(keras.layers.Conv2D):
    def __init__(self, kernel_size=2, channels=3, eps=5e-4, filters=None, **kwargs):
        for key in ("padding", "use_bias", "strides"):
            kwargs.pop(key, None)
        size = int(kernel_size if np.isscalar(kernel_size) else kernel_size[0])
        super().__init__(filters or 2 * channels * size * size, size, padding="valid", use_bias=True, **kwargs)
        self.channels, self.eps = int(channels), float(eps)

    def build(self, input_shape):
        super().build(input_shape)
        self.kernel.trainable = False

    def adapt(self, images):
        """Set the filters from float images (N, H, W, C) as this layer receives them."""
        k = self.kernel_size[0]
        cov = patch_covariance(np.asarray(images, np.float64), k)
        eigenvalues, eigenvectors = np.linalg.eigh(cov)  # ascending
        order = np.argsort(eigenvalues)[::-1]
        scaled = eigenvectors[:, order].T / np.sqrt(eigenvalues[order] + self.eps)[:, None]
        filters = np.concatenate([scaled, -scaled])[: self.filters]
        self.kernel.assign(filters.T.reshape(k, k, self.channels, self.filters).astype("float32"))

    def get_config(self):
        config = super().get_config()
        for key in ("padding", "use_bias", "strides"):
            config.pop(key, None)
        return {**config, "kernel_size": self.kernel_size[0], "channels": self.channels, "eps": self.eps}


def patch_covariance(images, k, chunk=512):
    """Uncentred covariance (as airbench computes it) of every k x k patch, flattened in the
    kernel's (row, column, channel) order."""
    n, h, w, c = images.shape
    total = np.zeros((k * k * c, k * k * c))
    count = 0
    for start in range(0, n, chunk):
        x = images[start:start + chunk]
        cols = [x[:, i:h - k + 1 + i, j:w - k + 1 + j, :] for i in range(k) for j in range(k)]
        patches = np.stack(cols, axis=3).reshape(-1, k * k * c)  # (patch, (i, j), channel)
        total += patches.T @ patches
        count += len(patches)
    return total / count


def whitening_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, PatchWhitening)]


def set_whitening_bias_trainable(model, trainable):
    """Whether the stems' biases train (train.whiten_bias_epochs; a data filter's proxy never trains it)."""
    for layer in whitening_layers(model):
        if layer.bias is not None:
            layer.bias.trainable = trainable


def init_whitening(model, images, count=5000):
    """Compute every PatchWhitening layer's filters from the first `count` training images."""
    for layer in whitening_layers(model):
        feed = keras.Model(model.inputs, layer.input)
        layer.adapt(feed.predict(images[:count].astype("float32"), batch_size=500, verbose=0))
