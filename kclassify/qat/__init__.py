"""Quantization-aware training and pruning through tensorflow-model-optimization (tfmot).

tfmot 0.8.1 only works on tf_keras (Keras 2) models, and importing it sets TF_USE_LEGACY_KERAS=1
for its whole process; kclassify models are Keras 3. So every tfmot step runs in a child
process and the two sides share only files:

- table.py (pure data, both sides): the one table of layer types the bridge takes, their
  structural fields and activations.
- graph.py (Keras 3, this process): a functional model as plain JSON (layer class, structural
  config, inbound layer names, trainable flag) + an .npz of its weights, with sample images and
  the Keras 3 outputs on them. Nested functional models (Keras Applications and kclassify .keras
  backbones) are flattened into the one graph; training-only layers (DropBlock2D,
  StochasticDepth) are wired through; a layer outside the table fails here, naming the layer and
  its type.
- translate.py (child: numpy, tensorflow, tf_keras only): rebuilds that description in tf_keras,
  copies the weights and checks the outputs match the Keras 3 ones.
- job.py (both sides, standard library): the typed job file the parent writes and the child reads.
- worker.py (child: + tfmot): `python -m kclassify.qat.worker JOB.json` fine-tunes with
  fake quantization (or magnitude pruning) and converts to .tflite with export.convert's set-up.
- run.py (Keras 3, this process): opens the run, marks the layers the fine-tuning's last phase
  trained, writes the job, launches the child with TF_USE_LEGACY_KERAS=1 in the child's
  environment only, and measures the .tflite exactly as `kclassify export` does, beside the
  post-training int8 file.
"""
import importlib.util

from kclassify.errors import KClassifyError

INSTALL_HINT = 'pip install "kclassify[qat]"'
NEEDS = ("tf_keras", "tensorflow_model_optimization")


class QATError(KClassifyError):
    """A model the bridge cannot translate, a missing optional dependency, or a failed child job
    (exit code 2, like every user-fixable kclassify error)."""


def missing_packages():
    """The optional QAT packages that are not installed (found without importing them: importing
    tfmot here would switch this process to legacy Keras)."""
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def require_tfmot():
    missing = missing_packages()
    if missing:
        raise QATError(f"quantization-aware training and pruning need {' and '.join(missing)} "
                       f"(not installed): {INSTALL_HINT}")
