"""The on-device kit's library: run a kclassify .tflite with ai-edge-litert, numpy and pillow only.

No TensorFlow, no Keras, no kclassify: copy this folder and the model to a device and run
evaluate.py / benchmark.py / predict.py. kclassify itself loads this same file (one source
for the runner, the preprocessing and the metrics on both sides).
"""
import json
import os
import time
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
METADATA_NAME = "kclassify"


class KitError(Exception):
    """Bad input to the kit: reported as one line, exit code 2."""


# ---------------------------------------------------------------- the model's input spec

def read_metadata(model_path):
    """The JSON spec kclassify embedded in the .tflite (metadata entry "kclassify"), or None."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(model_path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() and entry.Name().decode() == METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(bytes(data).decode())
    return None


def load_spec(model_path):
    """Input spec and class names: the JSON report beside the file, else the embedded metadata."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise KitError(f"model not found: {model_path}")
    beside = model_path.with_suffix(".json")
    if beside.is_file():
        spec = json.loads(beside.read_text())
        if "input" in spec and "class_names" in spec:
            return spec
    spec = read_metadata(model_path)
    if spec is None:
        raise KitError(f"{model_path} has no kclassify spec: neither {beside.name} beside it nor "
                       "embedded metadata (export it with `kclassify export`)")
    return spec


def load_image(path, spec):
    """An image file as the uint8 (H, W, C) array the model was trained on: RGB (or gray for
    1-channel models), resized with PIL bilinear to the input size, exactly as kclassify's
    data loader does."""
    from PIL import Image

    height, width, channels = spec["input"]["shape"][1:]
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (width, height):
                im = im.resize((width, height), Image.BILINEAR)
            array = np.asarray(im, dtype=np.uint8)
    except Exception as exc:
        raise KitError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    return array[..., None] if channels == 1 else array


def image_folder(root, spec):
    """(images, labels, paths, skipped) for root/<class>/<image>; class folders are matched to
    the model's class names, so the labels index the model's outputs."""
    root = Path(root)
    if not root.is_dir():
        raise KitError(f"image folder not found: {root}")
    names = spec["class_names"]
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    if not folders:
        raise KitError(f"{root} has no class sub-folders (expected {root}/<class name>/<images>)")
    unknown = [d.name for d in folders if d.name not in names]
    if unknown:
        raise KitError(f"class folder(s) {unknown[:5]} in {root} are not classes of this model "
                       f"(it knows {names[:10]}{' ...' if len(names) > 10 else ''})")
    images, labels, paths, skipped = [], [], [], []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                images.append(load_image(path, spec))
            except KitError as exc:
                skipped.append(str(exc))
                continue
            labels.append(names.index(folder.name))
            paths.append(str(path))
    if not images:
        raise KitError(f"no readable images under {root}")
    return np.stack(images), np.asarray(labels, np.int64), paths, skipped


# ---------------------------------------------------------------- running the model

def make_interpreter(model_path, num_threads=2, delegate=True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with quiet_stderr():
        try:
            return Interpreter(model_path=str(model_path), num_threads=num_threads,
                               experimental_op_resolver_type=kind)
        except (ValueError, RuntimeError) as exc:
            raise KitError(f"LiteRT cannot load {model_path}: {str(exc).strip().splitlines()[0]}") from None


class Classifier:
    """Feeds raw uint8 pixels in whatever the file's input wants (float pixels, or quantized
    int8/uint8 through the input's scale and zero point) and returns float probabilities."""

    def __init__(self, model_path, num_threads=2, delegate=True):
        self.path = str(model_path)
        self.interpreter = make_interpreter(model_path, num_threads, delegate)
        self._batch = None
        self._refresh()

    def _refresh(self):
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    @property
    def input_shape(self):
        return tuple(int(d) for d in self.input["shape_signature"][1:])

    def _resize(self, batch):
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input_shape])
            with quiet_stderr():
                self.interpreter.allocate_tensors()
            self._refresh()
            self._batch = batch

    def to_input(self, images):
        dtype = self.input["dtype"]
        scale, zero = self.input["quantization"]
        if dtype in (np.float32, np.float16):
            return images.astype(dtype)
        info = np.iinfo(dtype)
        return np.clip(np.round(images / scale + zero), info.min, info.max).astype(dtype)

    def from_output(self, out):
        scale, zero = self.output["quantization"]
        if self.output["dtype"] in (np.int8, np.uint8, np.int16) and scale:
            return (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32)

    def run(self, batch):
        """One invoke on an already-converted input batch; returns the raw output."""
        self.interpreter.set_tensor(self.input["index"], batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def predict(self, images, batch_size=64):
        """Probabilities for a uint8 (N, H, W, C) array."""
        images = np.asarray(images)
        outs = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            self._resize(len(chunk))
            outs.append(self.from_output(self.run(self.to_input(chunk))))
        return np.concatenate(outs)


def latency(model_path, threads=1, runs=50, warmup=5, seed=0):
    """Batch-1 latency in ms of one invoke (median, 90th percentile, mean) on random pixels."""
    model = Classifier(model_path, num_threads=threads)
    model._resize(1)
    pixels = np.random.default_rng(seed).integers(0, 256, (1, *model.input_shape)).astype(np.float32)
    batch = model.to_input(pixels)
    for _ in range(warmup):
        model.run(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(batch)
        times.append((time.perf_counter() - start) * 1000)
    times = np.asarray(times)
    return {"threads": threads, "runs": runs, "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)), "mean_ms": float(times.mean())}


def delegate_report(model_path, threads=1):
    """Which ops the default delegate (XNNPACK) took: ops in the file, how many it runs, in how
    many partitions, and which ops stayed on the plain CPU kernels (by op name and count)."""
    plain = make_interpreter(model_path, threads, delegate=False)
    ops = plain._get_ops_details()
    live = make_interpreter(model_path, threads, delegate=True)
    with quiet_stderr():
        live.allocate_tensors()
    nodes = live._get_ops_details()
    producer = {int(t): op["index"] for op in ops for t in op["outputs"]}
    taken = set()
    partitions = [n for n in nodes[len(ops):] if n["op_name"] == "DELEGATE"]
    for node in partitions:
        taken |= _covered(node, ops, producer)
    left = {}
    for op in ops:
        if op["index"] not in taken:
            left[op["op_name"]] = left.get(op["op_name"], 0) + 1
    return {"ops": len(ops), "delegated": len(taken), "partitions": len(partitions),
            "not_delegated": dict(sorted(left.items(), key=lambda kv: -kv[1]))}


def _covered(node, ops, producer):
    """Indices of the original ops one DELEGATE node replaced: walk back from its outputs until
    reaching its inputs (or constants, which have no producer)."""
    boundary = {int(t) for t in node["inputs"]}
    todo = [int(t) for t in node["outputs"]]
    covered = set()
    while todo:
        tensor = todo.pop()
        op = producer.get(tensor)
        if tensor in boundary or op is None or op in covered:
            continue
        covered.add(op)
        todo.extend(int(t) for t in ops[op]["inputs"] if t >= 0)
    return covered


class quiet_stderr:
    """Silence the C++ runtime's "Created TensorFlow Lite XNNPACK delegate" line (fd 2)."""

    def __enter__(self):
        self.saved = os.dup(2)
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 2)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        os.close(self.null)


# ---------------------------------------------------------------- metrics

def classification_report(probs, labels, class_names):
    """top-1/top-5, per-class precision/recall/F1/support, macro averages and the confusion
    matrix (rows = true class, columns = predicted)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels).astype(int)
    k = len(class_names)
    pred = probs.argmax(1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    top5 = np.argsort(-probs, axis=1)[:, : min(5, k)]
    per_class = [dict(name=str(n), precision=float(p), recall=float(r), f1=float(f), support=int(s))
                 for n, p, r, f, s in zip(class_names, precision, recall, f1, support)]
    present = support > 0
    return dict(
        top1=float((pred == labels).mean()),
        top5=float((top5 == labels[:, None]).any(1).mean()),
        count=int(len(labels)),
        macro=dict(precision=float(precision[present].mean()), recall=float(recall[present].mean()),
                   f1=float(f1[present].mean())),
        per_class=per_class,
        confusion=confusion.tolist(),
        class_names=[str(n) for n in class_names],
    )


def format_report(report, title="evaluation"):
    """The per-class table a person reads, then the headline figures."""
    width = max([len(c["name"]) for c in report["per_class"]] + [9])
    lines = [f"{title}: {report['count']} images",
             f"{'class':<{width}}  precision  recall     f1  support"]
    for c in report["per_class"]:
        lines.append(f"{c['name']:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  {c['support']:7d}")
    m = report["macro"]
    lines.append(f"{'macro avg':<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {report['count']:7d}")
    extra = f"  loss {report['loss']:.4f}" if "loss" in report else ""
    lines.append(f"top-1 {report['top1']:.4f}  top-5 {report['top5']:.4f}{extra}")
    return "\n".join(lines)


def format_confusion(report, limit=20):
    """The confusion matrix as text (rows = true class); large ones are summarized."""
    names, matrix = report["class_names"], np.asarray(report["confusion"])
    if len(names) > limit:
        off = matrix.copy()
        np.fill_diagonal(off, 0)
        worst = np.dstack(np.unravel_index(np.argsort(-off, axis=None)[:10], off.shape))[0]
        return "most frequent confusions (true -> predicted):\n" + "\n".join(
            f"  {names[i]} -> {names[j]}: {off[i, j]}" for i, j in worst if off[i, j])
    width = max(len(n) for n in names)
    cell = max(len(str(matrix.max())), 3)
    head = " " * (width + 2) + " ".join(f"{i:>{cell}}" for i in range(len(names)))
    rows = [f"{n:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row) for n, row in zip(names, matrix)]
    return "confusion matrix (rows = true class, columns = predicted class index):\n" + "\n".join([head, *rows])
