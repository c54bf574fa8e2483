"""Run a .tflite classifier with ai-edge-litert on uint8 images. numpy only: no TensorFlow."""
import numpy as np


class TFLiteClassifier:
    """Feeds raw uint8 pixels in whatever the file's input wants (float32 pixels, or quantized
    int8/uint8 via the input's scale and zero point) and returns float probabilities."""

    def __init__(self, path, num_threads=2):
        from ai_edge_litert.interpreter import Interpreter

        self.path = str(path)
        self.interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = None

    @property
    def input_shape(self):
        return tuple(int(d) for d in self.input["shape_signature"][1:])

    def _resize(self, batch):
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input_shape])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self._batch = batch

    def _to_input(self, images):
        dtype = self.input["dtype"]
        scale, zero = self.input["quantization"]
        if dtype in (np.float32, np.float16):
            return images.astype(dtype)
        if scale == 1.0 and zero == 0 and dtype == np.uint8:
            return images.astype(np.uint8)
        info = np.iinfo(dtype)
        return np.clip(np.round(images / scale + zero), info.min, info.max).astype(dtype)

    def _from_output(self, out):
        scale, zero = self.output["quantization"]
        if self.output["dtype"] in (np.int8, np.uint8, np.int16) and scale:
            return (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32)

    def predict(self, images, batch_size=64):
        """Probabilities for a uint8 (N, H, W, C) array."""
        outs = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            self._resize(len(chunk))
            self.interpreter.set_tensor(self.input["index"], self._to_input(chunk))
            self.interpreter.invoke()
            outs.append(self._from_output(self.interpreter.get_tensor(self.output["index"])))
        return np.concatenate(outs)
