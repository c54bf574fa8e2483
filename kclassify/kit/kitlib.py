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


# ---------------------------------------------------------------- decoding images (THE decoder)
# kclassify's data sources, its evaluation and export calibration call these same functions
# (kclassify loads this file), so a device sees exactly the pixels the model was trained on.

RESIZE_POLICIES = ("crop", "squash", "pad")  # shorter side + center crop; stretch; letterbox
BACKGROUND = 255  # transparent pixels are composited onto white
PAD_VALUE = 0  # the letterbox bars of `pad` are black
DECODER_VERSION = 2  # part of kclassify's cache keys: bump it when decoded pixels change
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageError(KitError):
    """A file that is not a usable image; `reason` says why in a few words."""

    def __init__(self, path, reason):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read image {path}: {reason}")


def decode_image(path, data=None):
    """An image file as uint8 (H, W, 3) RGB at its stored resolution, as it is meant to be seen:
    EXIF orientation applied (all eight), the first frame of an animation, 16-bit samples scaled
    to 8 bits (the high byte, as Pillow does for 16-bit RGB), transparency composited onto
    BACKGROUND, and every other mode (CMYK, palette, gray, 1-bit, 32-bit int, float) made RGB.
    Raises ImageError for an empty, truncated or non-image file and for a decompression bomb
    (more pixels than PIL.Image.MAX_IMAGE_PIXELS). `data`: the file's bytes, when they come from
    elsewhere (a TensorFlow Datasets record); `path` then only names them in errors."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        if (path.stat().st_size if data is None else len(data)) == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.width * im.height > limit:  # Pillow only warns below twice the limit
                raise ImageError(path, f"decompression bomb ({im.width}x{im.height} pixels, over "
                                       f"PIL.Image.MAX_IMAGE_PIXELS={limit})")
            im.seek(0)
            im.load()
            return _to_rgb(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (no known image format)") from None
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else f"unreadable ({exc})"
        raise ImageError(path, reason) from None
    except (SyntaxError, ValueError, TypeError, EOFError, IndexError) as exc:  # Pillow's parsers raise these too
        raise ImageError(path, f"corrupt ({type(exc).__name__}: {exc})") from None


def _to_rgb(im):
    from PIL import Image

    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        im = Image.fromarray(_to_8bit(np.asarray(im), im.mode), "L")
    if im.mode in _ALPHA or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint32)
        alpha = rgba[..., 3:]
        return ((rgba[..., :3] * alpha + BACKGROUND * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _to_8bit(values, mode):
    """Gray samples wider than 8 bits to 0..255, scaled (never clipped at 255)."""
    if mode == "F":  # floats: 0..1 if they fit there, else taken as 0..255
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(values) * scale + 0.5, 0, 255).astype(np.uint8)
    values = np.clip(values.astype(np.int64), 0, None)
    shift = 8 if mode in _SIXTEEN_BIT or values.max(initial=0) <= 0xFFFF else 23  # 16-bit, else 31-bit
    return (values >> shift).astype(np.uint8)


def _target(size):
    return (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _round(x):
    return int(np.floor(x + 0.5))


def resize_image(array, size, resize="crop"):
    """A uint8 (H, W, C) array brought to `size` (an int for a square, or (height, width)) with
    PIL bilinear: "crop" scales the shorter side to fit and cuts the center, "squash" stretches
    to the size (aspect lost), "pad" scales the longer side to fit and letterboxes with PAD_VALUE.
    An image already at the size is returned unchanged, whatever the policy."""
    if resize not in RESIZE_POLICIES:
        raise KitError(f"unknown resize policy {resize!r}: use one of {', '.join(RESIZE_POLICIES)}")
    if size is None:
        return array
    (th, tw), (h, w) = _target(size), array.shape[:2]
    if (h, w) == (th, tw):
        return array
    if resize == "squash":
        return _pil_resize(array, th, tw)
    scale = max(th / h, tw / w) if resize == "crop" else min(th / h, tw / w)
    nh, nw = max(_round(h * scale), 1), max(_round(w * scale), 1)
    if resize == "crop":
        nh, nw = max(nh, th), max(nw, tw)
        top, left = (nh - th) // 2, (nw - tw) // 2
        return _pil_resize(array, nh, nw)[top:top + th, left:left + tw]
    nh, nw = min(nh, th), min(nw, tw)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out = np.full((th, tw, array.shape[2]), PAD_VALUE, np.uint8)
    out[top:top + nh, left:left + nw] = _pil_resize(array, nh, nw)
    return out


def _pil_resize(array, height, width):
    from PIL import Image

    if array.shape[:2] == (height, width):
        return array
    gray = array.shape[2] == 1
    im = Image.fromarray(array[..., 0] if gray else array).resize((width, height), Image.BILINEAR)
    out = np.asarray(im, dtype=np.uint8)
    return out[..., None] if gray else out


def load_image(path, size=None, resize="crop", channels=3, data=None):
    """An image file as the uint8 (H, W, channels) array a model takes: decode_image, then
    resize_image to `size` (None keeps the stored size), then gray (ITU-R 601, Pillow's "L")
    for 1-channel models. `size` may also be a model spec (kitlib.load_spec): its input shape,
    channels and resize policy are used. `data`: the file's bytes, as for decode_image."""
    if isinstance(size, dict):
        height, width, channels = size["input"]["shape"][1:]
        resize = size["input"].get("resize_policy", "crop")
        size = (height, width)
    array = resize_image(decode_image(path, data), size, resize)
    if channels == 1:
        from PIL import Image

        array = np.asarray(Image.fromarray(array).convert("L"), dtype=np.uint8)[..., None]
    return array


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
