"""The QAT worker's job file: what the parent (run.py) asks the child (worker.py) to do.

Typed and complete: the parent fills every setting from the recipe's qat section (recipe.QATConfig
states the defaults, once; nothing here or in the worker repeats one), and `Job.read` in the
child rejects a missing or unknown field. Standard library only: the child imports it.

    {"task": "qat", "result": ".../result.json", "tolerance": 1e-05,
     "model": {"graph": ..., "weights": ..., "samples": ..., "name": "mobilenet_finetune", "quantize": true},
     "data": {"train": ".../train.npz", "val": ".../val.npz", "calibration": ".../calibration.npz"},
     "train": {"epochs": 1, "steps_per_epoch": 400, "batch_size": 32, "optimizer": "adamw", "lr": 3e-05,
               "momentum": 0.9, "weight_decay": 0.0001, "freeze_bn": true, "calibration_batches": 8,
               "range_log_every": 25, "seed": 0, "augment": {"crop_pad": 8, "pad_mode": "reflect", "flip": true,
                                                       "on_device": false}},
     "out": ".../model_qat_int8.tflite", "prune": null, "models": []}
"""
import json
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Optional, get_args

TASKS = ("check", "qat", "prune")


class JobError(Exception):
    """A job file that does not describe a job (missing, unknown or mistyped fields)."""


@dataclass(frozen=True)
class ModelFiles:
    graph: str      # graph.json (graph.py)
    weights: str    # weights.npz
    samples: str    # samples.npz: images and the Keras 3 outputs on them (the exactness check)
    name: str
    quantize: bool  # check task: also let tfmot quantize it


@dataclass(frozen=True)
class DataFiles:
    train: str        # .npz with uint8 images and int labels
    val: str          # .npz, the split the figures are measured on
    calibration: str  # .npz with uint8 images: the activation ranges before fine-tuning


@dataclass(frozen=True)
class Augment:
    crop_pad: int
    pad_mode: str  # reflect | constant
    flip: bool
    on_device: bool  # runtime.augment_on as the parent resolved it: augment inside the compiled step


@dataclass(frozen=True)
class Training:
    epochs: int
    steps_per_epoch: Optional[int]  # None: one pass over the training images
    batch_size: int
    optimizer: str  # sgd | adamw: the run's own
    lr: float       # peak; cosine to 0 over all steps
    momentum: float
    weight_decay: float
    freeze_bn: bool
    calibration_batches: int
    range_log_every: int  # steps between snapshots of the activation ranges (0: none)
    seed: int
    augment: Augment


@dataclass(frozen=True)
class Pruning:
    sparsity: float
    schedule: str  # polynomial | constant
    dense_out: str
    int8_out: Optional[str]


@dataclass(frozen=True)
class Job:
    task: str
    result: str
    tolerance: float
    model: Optional[ModelFiles] = None  # qat, prune
    data: Optional[DataFiles] = None    # qat, prune
    train: Optional[Training] = None    # qat, prune
    out: Optional[str] = None           # qat, prune
    prune: Optional[Pruning] = None     # prune
    models: list = field(default_factory=list)  # check: [ModelFiles]

    NEEDS = {"check": ("models",), "qat": ("model", "data", "train", "out"),
             "prune": ("model", "data", "train", "out", "prune")}

    def write(self, path):
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=1)

    @classmethod
    def read(cls, path):
        with open(path) as f:
            raw = json.load(f)
        job = _build(cls, raw, "job")
        if job.task not in TASKS:
            raise JobError(f"unknown task {job.task!r}; one of {', '.join(TASKS)}")
        missing = [name for name in cls.NEEDS[job.task] if not getattr(job, name)]
        if missing:
            raise JobError(f"a {job.task} job needs {', '.join(missing)}")
        return job


def _nested(annotation):
    """The dataclass a field holds (itself or inside Optional[...]), else None."""
    for candidate in (annotation, *get_args(annotation)):
        if is_dataclass(candidate):
            return candidate
    return None


def _build(cls, raw, where):
    if not isinstance(raw, dict):
        raise JobError(f"{where}: expected an object, got {type(raw).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise JobError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise JobError(f"{where}: missing field {f.name!r}")
            continue
        value = raw[f.name]
        if _nested(f.type) and value is not None:
            value = _build(_nested(f.type), value, f"{where}.{f.name}")
        elif f.name == "models":
            value = [_build(ModelFiles, v, f"{where}.models[{i}]") for i, v in enumerate(value)]
        values[f.name] = value
    return cls(**values)
