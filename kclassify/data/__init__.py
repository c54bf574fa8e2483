"""Data: one image decoder (decode.py), sources behind one registry (sources.py and the plug-ins
below, which register themselves), packing to TFRecord shards (pack.py) and streaming them
(tfrecord.py). The tf.data training pipeline is pipeline.py. Importing this stays free of
TensorFlow."""
from kclassify.data.decode import load_image  # noqa: F401
from kclassify.data.sources import SOURCES, Dataset, Split, load_data  # noqa: F401
from kclassify.data import image_folder, tfds_source, tfrecord  # noqa: F401,E402  (plug-in sources register here)
from kclassify.data.tfrecord import StreamSplit  # noqa: F401,E402
