"""Data sources behind one registry, and the tf.data pipeline that feeds training."""
from kclassify.data.sources import SOURCES, Dataset, Split, load_data  # noqa: F401
