"""The on-device kit: a few files that evaluate, benchmark and run a kclassify .tflite with
numpy, pillow and ai-edge-litert alone (no TensorFlow, no kclassify). `kclassify export --kit DIR`
copies them; their scripts import `kitlib` from their own folder.

`kitlib.py` is also the one source of the image preprocessing, the LiteRT runner and the metrics
inside kclassify (`from kclassify.kit import kitlib`), so the package and the kit cannot drift.
"""
from pathlib import Path

KIT_DIR = Path(__file__).resolve().parent
KIT_FILES = ("kitlib.py", "evaluate.py", "benchmark.py", "predict.py", "README.md")
