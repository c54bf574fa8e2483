"""Typed, strict recipe schema. Loading and validating a recipe never imports TensorFlow.

A typo fails at load time with the key, its section and a close match; a value of the wrong
type or range names the field and what was given.
"""
import copy
import importlib.util
from pathlib import Path
from typing import get_args, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator, ValidationError

from kclassify import catalog
from kclassify.data.spec import check_data
from kclassify.errors import RecipeError
from kclassify.registry import suggest
from kclassify.tflite.modes import MODES as EXPORT_MODES


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    source: str = "digits"
    path: Optional[str] = None  # image_folder directory, npz file, or a .tar.gz of an image folder
    subdir: Optional[str] = None  # folder inside `path` (or inside the archive) holding the classes
    val_path: Optional[str] = None  # a separate validation folder (or archive) instead of a split
    val_subdir: Optional[str] = None  # folder inside val_path holding the classes
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    val_count: Optional[int] = Field(None, ge=1)  # exact stratified validation size (wins over fraction)
    name: Optional[str] = None  # tfds dataset name
    data_dir: Optional[str] = None  # tfds data_dir
    manual_dir: Optional[str] = None  # tfds manual_dir (local archives)
    image_size: Optional[int] = Field(None, ge=4)  # square resize; None keeps the source size
    # How images reach image_size: crop (shorter side to the size, then the center), squash
    # (stretch, aspect lost) or pad (longer side to the size, letterboxed). Images already at the
    # size are unchanged by all three.
    resize: Literal["crop", "squash", "pad"] = "crop"
    strict: bool = False  # corrupt images: error (True) or skip with a count (False)
    limit: Optional[int] = Field(None, ge=1)  # cap on training images (smoke runs)
    # Decoded images up to this size (at image_size) are held in memory; a bigger image_folder is
    # packed into TFRecord shards in the cache once and streamed (0: always stream).
    cache_gb: float = Field(4.0, ge=0)
    max_side: Optional[int] = Field(None, ge=8)  # packed images keep their longer side up to this (default 2 x image_size)
    pack_format: Literal["jpeg", "raw"] = "jpeg"  # how image_folder packs its cache (jpeg: quality 95)
    shuffle_buffer: Optional[int] = Field(None, ge=1)  # streamed training: examples in the shuffle buffer (default: 256 MB of them, at most 10,000)


class ModelConfig(Section):
    name: str = "resnet20"
    params: dict = Field(default_factory=dict)  # builder keyword arguments (width, dropout, ...)
    # dirac: every convolution whose input fits in its output starts as the identity on its first
    # in_channels filters (airbench); the rest keep the builder's initializer.
    init: Literal["default", "dirac"] = "default"


class AugmentConfig(Section):
    crop_pad: int = Field(0, ge=0)  # pad by this many pixels then crop back, per image
    pad_mode: Literal["reflect", "constant"] = "reflect"
    # Horizontal flip: true = random per image; "alternate" = each image mirrored in exactly one of
    # every two consecutive epochs, at random in the first (airbench: more diverse than random).
    flip: Union[bool, Literal["alternate"]] = False
    # Registered augmentations applied in order, each drawn per image, e.g.
    # [{name: autoaugment, policy: cifar10}, {name: cutout, length: 16}] (kclassify augment list)
    ops: list[dict] = Field(default_factory=list)
    mixup_alpha: float = Field(0.0, ge=0)  # MixUp lambda ~ Beta(alpha, alpha); 0 = off
    cutmix_alpha: float = Field(0.0, ge=0)  # CutMix lambda ~ Beta(alpha, alpha); 0 = off
    mix_switch_prob: float = Field(0.5, ge=0, le=1)  # with both on: chance of CutMix for a batch
    mix_prob: float = Field(1.0, ge=0, le=1)  # chance a batch is mixed at all
    mix_off_epochs: int = Field(0, ge=0)  # no MixUp/CutMix in the last N epochs
    # Inception/timm random-resized-crop from the stored resolution (data streamed, not shrunk
    # first): true for scale [0.08, 1] and ratio [3/4, 4/3], or {scale: [lo, hi], ratio: [lo, hi]}.
    random_resized_crop: Union[bool, dict[Literal["scale", "ratio"], tuple[float, float]]] = False

    @model_validator(mode="after")
    def _ops_are_named(self):
        for i, op in enumerate(self.ops):
            if not isinstance(op.get("name"), str):
                raise ValueError(f"augment.ops[{i}] needs a name, e.g. {{name: cutout, length: 16}}")
        return self


class DistillConfig(Section):
    teacher: str  # a trained .keras model (or run folder) taking the same images
    alpha: float = Field(0.9, ge=0, le=1)  # weight of the distillation term
    temperature: float = Field(4.0, gt=0)


class AverageConfig(Section):
    # ema: a shadow copy, updated every `every` steps; swa: the mean of epoch-end weights;
    # lookahead (airbench): every `every` steps the shadow moves toward the weights and the weights
    # are reset to the shadow, with decay momentum**every * progress**power (0 at the start, so
    # early training is untouched); training ends on the shadow.
    kind: Literal["ema", "swa", "lookahead"] = "ema"
    momentum: float = Field(0.999, gt=0, lt=1)  # EMA: per update, over every weight incl. BN statistics
    every: int = Field(1, ge=1)  # EMA / lookahead: steps between updates (airbench lookahead: 5)
    power: float = Field(3.0, ge=0)  # lookahead: decay ramp exponent over training progress
    start_epoch: int = Field(0, ge=0)  # SWA: average the weights at the end of each epoch from here
    lr: Optional[float] = Field(None, gt=0)  # SWA: learning rate from start_epoch (constant, or a cycle's top)
    cycle_epochs: int = Field(1, ge=1)  # SWA: >1 makes the rate cyclic: lr down to min_lr over each cycle,
    min_lr: float = Field(0.0, ge=0)  # averaging the weights at each cycle's end (Izmailov et al.)
    bn_batches: int = Field(50, ge=1)  # SWA: batches used to recompute BatchNorm statistics


class MuonConfig(Section):
    """train.optimizer muon: keras.optimizers.Muon on the convolution filters (flattened to the
    matrix the convolution multiplies by), SGD with the recipe's lr, momentum and multipliers on
    the rest (biases, BatchNorm, the head), as airbench94_muon splits them (94% in 8 epochs)."""
    lr: float = Field(0.24, gt=0)  # peak rate of the filters, on the run's schedule
    momentum: float = Field(0.6, ge=0, lt=1)
    nesterov: bool = True
    normalize_weights: bool = True  # rescale each filter bank to norm sqrt(filters) before a step (airbench)
    ns_steps: int = Field(5, ge=1)  # Newton-Schulz iterations
    # auto: bfloat16 when the run computes in it (as airbench94_muon does; on a 2-core AVX-512 CPU the
    # iteration takes 0.11 s of a 2.6-s cifar10_fast step against 0.22 in float32), float32 otherwise
    ns_dtype: Literal["auto", "float32", "bfloat16"] = "auto"


class LowResConfig(Section):
    """train.low_res: progressive resizing (fast.ai; FFCV's ResNet-50 160 -> 192 px). The first
    `fraction` of a phase's steps train on the augmented batch resized (bilinear, antialiased) to
    `size` x `size`, the rest at the data's size: a step costs about (size / side)^2 as much, so a
    budgeted run plans more steps. The network must take any input size (global pooling)."""
    size: int = Field(ge=4)
    fraction: float = Field(gt=0, lt=1)


class DataFilterConfig(Section):
    """train.data_filter: a proxy network ranks each drawn batch by its loss and the model trains on
    the hardest `keep` share (airbench96_faster); train.batch_size is the drawn batch."""
    # airbench96_faster's proxy: airbench's groups at widths 32/64/64 (ReLU here: faster on a CPU)
    proxy: ModelConfig = Field(default_factory=lambda: ModelConfig(
        name="airbench93", params={"widths": [32, 64, 64], "act": "relu"}, init="dirac"))
    keep: float = Field(0.5, gt=0, lt=1)
    proxy_every: int = Field(4, ge=1)  # the proxy learns from its own hardest share every Nth step

    def kept(self, batch):
        """Images the model trains on out of a drawn batch of `batch`."""
        return max(1, int(round(batch * self.keep)))


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    steps_per_epoch: Optional[int] = Field(None, ge=1)  # cap (smoke runs); default: one pass over train
    # muon: Muon on the conv filters, SGD on the rest (train.muon); kclassify qat/prune fine-tune such a run with SGD
    optimizer: Literal["sgd", "adamw", "muon"] = "sgd"
    muon: MuonConfig = Field(default_factory=MuonConfig)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)  # as in the papers; biases and BN are excluded
    schedule: Literal["cosine", "step", "constant", "onecycle"] = "cosine"
    # Linear scaling rule (Goyal et al. 2017): lr is given for this batch size and scaled by
    # batch_size / lr_reference_batch; pair it with warmup_epochs for large batches.
    lr_reference_batch: Optional[int] = Field(None, ge=1)
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    step_milestones: list[float] = Field(default_factory=list)  # epochs where lr *= step_gamma
    step_gamma: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # "uniform": y(1-eps) + eps/K (Szegedy et al., Keras); "others": the true class gets 1-eps
    # and the eps is shared by the K-1 other classes.
    label_smoothing_mode: Literal["uniform", "others"] = "uniform"
    bn_momentum: float = Field(0.9, gt=0, lt=1)  # Keras' 0.99 lags badly in short runs
    # Unbalanced data: "sampling" draws every class equally often (each image with weight 1/n_c);
    # "loss" weights classes by the inverse effective number of samples (Cui et al. 2019).
    class_balance: Literal["none", "sampling", "loss"] = "none"
    class_balance_beta: float = Field(0.999, ge=0, lt=1)
    distill: Optional[DistillConfig] = None  # knowledge distillation from a frozen teacher
    average: Optional[AverageConfig] = None  # EMA, SWA or lookahead; the saved model is the averaged one
    data_filter: Optional[DataFilterConfig] = None  # train on the hardest share of each batch (fit only)
    # Time budget for the whole command (data, training, final evaluation, exports): the run measures
    # its own speed after a short warm-up and plans its steps to end inside it; epochs becomes a cap.
    budget_minutes: Optional[float] = Field(None, gt=0)
    warmup_fraction: Optional[float] = Field(None, ge=0, lt=1)  # warmup as a fraction of all steps
    warmup_start: float = Field(0.0, ge=0, le=1)  # lr at the first step, as a fraction of lr
    # BatchNorm: freeze the scale (gamma stays 1) and multiply the learning rate of its bias (beta);
    # airbench: frozen scale, bias lr x64. bn_weight_decay also decays BN parameters and biases.
    bn_freeze_scale: bool = False
    bn_bias_lr_mult: float = Field(1.0, gt=0)
    bn_weight_decay: bool = False
    whiten_bias_epochs: Optional[float] = Field(None, ge=0)  # patch-whitening stem: bias trains this long
    low_res: Optional[LowResConfig] = None  # the early steps on smaller images
    val_every: int = Field(1, ge=0)  # epochs between validations while training (0: only at the end)
    # Recovery: on a NaN loss or one above loss_upper_bound, restore the last good checkpoint,
    # halve the learning rate and go on, up to recovery_trials times; then stop (exit code 3).
    recovery_trials: int = Field(0, ge=0)
    loss_upper_bound: Optional[float] = Field(None, gt=0)

    def trained_batch(self, batch=None):
        """Images one step trains the model on: the drawn batch (`batch`, where the caller clamped it
        to the data; else batch_size), or its kept share under data_filter."""
        batch = batch or self.batch_size
        return self.data_filter.kept(batch) if self.data_filter else batch

    def effective_lr(self):
        # The gradient averages over the images trained on: under data_filter, the kept share
        return self.lr * (self.trained_batch() / self.lr_reference_batch if self.lr_reference_batch else 1.0)

    @model_validator(mode="after")
    def _milestones_inside(self):
        bad = [m for m in self.step_milestones if not 0 < m < self.epochs]
        if bad:
            raise ValueError(f"step_milestones {bad} must lie between 0 and epochs={self.epochs}")
        if self.warmup_fraction is not None and self.warmup_epochs:
            raise ValueError("give warmup_epochs or warmup_fraction, not both")
        return self


class PhaseConfig(Section):
    unfreeze: str = "head"  # head | all | topN (last N backbone blocks) | re:REGEX on layer names
    epochs: int = Field(1, ge=1)
    lr: Optional[float] = Field(None, gt=0)  # default: train.lr for head, train.lr * unfrozen_lr_scale after
    backbone_lr_mult: Optional[float] = Field(None, ge=0)  # default: finetune.backbone_lr_mult


class FinetuneConfig(Section):
    mode: Literal["phases", "linear_probe", "knn"] = "phases"
    phases: list[PhaseConfig] = Field(default_factory=list)
    train_bn: bool = False  # unfrozen BatchNorm layers also train (and update their statistics)
    unfrozen_lr_scale: float = Field(0.1, gt=0)
    backbone_lr_mult: float = Field(1.0, ge=0)  # discriminative rate: backbone lr = phase lr * this
    knn_k: int = Field(1, ge=1)


class RuntimeConfig(Section):
    seed: int = 0
    # auto: mixed_float16 on a GPU; on a CPU, mixed_bfloat16 where a quick matmul test at start-up
    # shows bf16 faster than float32 (AMX, AVX512-BF16), else float32.
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16", "auto"] = "float32"
    # default: one device; mirrored: every GPU (or cpu_devices logical CPUs) of this machine;
    # multi_worker: MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (`kclassify launch`).
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    cpu_devices: Optional[int] = Field(None, ge=1)  # split the CPU into N logical devices
    # BatchNorm statistics over the global batch of all replicas (one all-reduce per BN layer), so a
    # distributed run computes what one process with the same global batch computes.
    sync_bn: bool = False
    # fit and finetune: BatchNorm trains through TensorFlow's fused kernel (kclassify/layers/fused_bn.py);
    # false: Keras' own ops. Inference always runs Keras' ops, and the QAT worker's tf_keras BatchNorm stays
    # unfused either way (its translation is checked against Keras' arithmetic).
    fused_bn: bool = True
    # fit and finetune: where a stride-1 'same' Conv2D's filter gradient is computed as k*k matrix
    # products instead of the convolution kernel's own backward pass (kclassify/layers/conv_grad.py;
    # oneDNN's bfloat16 kernel is slow on AMX CPUs at small feature maps). auto: in a bfloat16 run on a
    # CPU, timed per layer shape at start-up and routed where faster; native: never; matmul: every such layer.
    # The same gradients either way, so kclassify qat / prune (tf_keras worker) train with TensorFlow's own.
    conv_filter_grad: Literal["auto", "native", "matmul"] = "auto"
    # Where a training batch is flipped, augmented, one-hot encoded, smoothed and mixed: host (tf.data
    # threads), device (inside the compiled train step: the input stream only gathers uint8 images), or
    # auto: device where TensorFlow sees a GPU, whose step outruns what CPU threads can augment.
    augment_on: Literal["auto", "host", "device"] = "auto"
    jit_compile: bool = False
    verbose: Literal["auto", 0, 1, 2] = "auto"


class OutputConfig(Section):
    dir: Optional[str] = None  # default: runs/<recipe name>
    tensorboard: bool = True
    plots: bool = True
    export: list[Literal[tuple(EXPORT_MODES)]] = Field(default_factory=list)  # names in the modes table
    # int8 exports: "auto" = calibration.auto_count (32 a class, 300 to 1000, capped by the data), or a number
    calibration_images: Union[Literal["auto"], int] = "auto"
    # int8 exports: the top-1 points the file may lose (export --max-drop); searched on the validation images
    max_drop: Optional[float] = Field(None, gt=0)
    checkpoint_every_steps: Optional[int] = Field(None, ge=1)  # also checkpoint mid-epoch
    keep_checkpoints: int = Field(2, ge=1)  # the newest N; an older one is the fallback for a corrupt newest
    log_every_steps: int = Field(0, ge=0)  # append loss and lr to steps.csv every N steps (0: off)
    report: bool = True  # write report.html at the end of fit and finetune

    @model_validator(mode="after")
    def _calibration_count(self):
        if self.calibration_images != "auto" and self.calibration_images < 1:
            raise ValueError(f"calibration_images must be 'auto' or at least 1, got {self.calibration_images}")
        return self


class EvaluateConfig(Section):
    """How the run's figure is measured: fit's final report and `kclassify evaluate RUN` use it."""
    # Test-time augmentation, a preset of weighted views (kclassify.tta.PRESETS): none; flip (the
    # image and its mirror); mirror_translate (airbench: both, plus each shifted one pixel up-left and
    # down-right, reflect-padded; weights 1/4, 1/4 and 1/8 each); crops (centre and 4 shifted crops,
    # each mirrored, equal weights).
    tta: Literal["none", "flip", "mirror_translate", "crops"] = "none"
    shift: Optional[int] = Field(None, ge=1)  # pixels of the shifted views (default 1; crops: 4)
    average: Literal["logits", "probs"] = "logits"  # logits: a weighted mean of log-probabilities
    # the views only for this share of the images the plain view is least sure of (the rest keep the
    # plain prediction): the final evaluation's TTA then costs that share of its time
    tta_fraction: float = Field(1.0, gt=0, le=1)
    # images per forward pass; default: 256 up to 64x64 pixels, fewer for bigger images and more views
    # (16 at 224x224), so a full-resolution evaluation does not hold gigabytes (pipeline.eval_batch_size)
    batch_size: Optional[int] = Field(None, ge=1)


class QATConfig(Section):
    """`kclassify qat` / `kclassify prune`: fine-tuning through tensorflow-model-optimization."""
    # qat: steps = epochs x one pass (0 = only calibrate the fake-quant ranges); default: `steps`
    epochs: Optional[int] = Field(None, ge=0)
    steps: Optional[int] = Field(None, ge=1)  # qat: total steps when epochs is not given; default settle_steps
    settle_steps: int = Field(400, ge=1)  # qat: enough for the activation ranges to settle (benchmarks/int8_budget.py --qat-sweep)
    # qat: peak rate, cosine to 0, with the run's optimizer; default lr_fraction x the run's last peak rate
    lr: Optional[float] = Field(None, gt=0)
    lr_fraction: float = Field(0.1, gt=0, le=1)  # measured with benchmarks/int8_budget.py --qat-sweep
    momentum: Optional[float] = Field(None, ge=0, lt=1)  # SGD momentum; default: train.momentum
    keep: Literal["better", "qat"] = "better"  # qat: ship the better of QAT and post-training int8, or QAT always
    range_log_every: int = Field(25, ge=0)  # qat: steps between snapshots of the activation ranges (0: off)
    prune_epochs: int = Field(2, ge=1)  # prune: fine-tuning epochs
    prune_lr: float = Field(1e-3, gt=0)  # prune: SGD with momentum, cosine to 0, plain cross-entropy
    batch_size: Optional[int] = Field(None, ge=1)  # default: train.batch_size
    steps_per_epoch: Optional[int] = Field(None, ge=1)  # cap (smoke runs); default: one pass over train
    freeze_bn: bool = True  # qat: BatchNorm keeps its moving statistics (what TFLite folds) while fine-tuning
    calibration_batches: int = Field(8, ge=1)  # batches that set the activation ranges before fine-tuning
    check_images: int = Field(16, ge=1)  # validation images for the Keras 3 == tf_keras check
    tolerance: float = Field(1e-5, gt=0)  # max |difference| allowed by that check
    sparsity: float = Field(0.5, gt=0, lt=1)  # prune: fraction of each prunable kernel set to zero
    schedule: Literal["polynomial", "constant"] = "polynomial"  # prune: sparsity schedule
    prune_freeze_bn: bool = False  # prune: BatchNorm re-estimates its statistics as weights are zeroed
    prune_int8: bool = False  # prune: also write an int8 (post-training quantized) copy


class Recipe(Section):
    name: str = "recipe"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    qat: QATConfig = Field(default_factory=QATConfig)

    def run_dir(self):
        return Path(self.output.dir or Path("runs") / self.name)

    def to_yaml(self):
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def recipes_dir():
    """The shipped recipes: the checkout's recipes/ or the copy packed into the wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "recipes", here / "_recipes"):
        if cand.is_dir():
            return cand
    return here.parent / "recipes"


def shipped_recipes():
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def find_recipe(name_or_path):
    """A path to an existing YAML file, or the name of a shipped recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = recipes_dir() / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and shipped.is_file():
        return shipped
    raise RecipeError(f"recipe {str(name_or_path)!r} not found{suggest(path.stem, shipped_recipes())}")


def load_recipe(name_or_path, overrides=(), sections=None):
    """Read a YAML recipe, apply `a.b=value` overrides (and `sections`, {section: {field: value}},
    merged in) and validate it."""
    path = find_recipe(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return _apply(raw, overrides, sections, str(path))


def load_saved_recipe(path):
    """The recipe.yaml a run folder saved, read as today's schema: fields renamed since it was
    written are carried over (migrate_saved), so an older run still evaluates, exports and resumes."""
    return validate(migrate_saved(yaml.safe_load(Path(path).read_text()) or {}), source=str(path))


def migrate_saved(raw):
    """A resolved recipe written by an earlier version, with renamed fields under their new names:
    output.budget_holdout (later max_drop_holdout) is gone: the max-drop search measures on the
    validation images, never trained on, so no training images are held out for it; model.params.width
    of the CIFAR ResNets and MobileNetV3 (a channel multiplier) is width_mult. Only for saved runs: in
    a user's recipe a removed or renamed field is refused by name, so `width` never changes meaning."""
    raw = copy.deepcopy(raw)
    output = raw.get("output") or {}
    for gone in ("budget_holdout", "max_drop_holdout"):
        output.pop(gone, None)
    model = raw.get("model") or {}
    params = model.get("params") or {}
    takes = catalog.load()["models"].get(model.get("name"), {}).get("params", [])
    if "width" in params and "width" not in takes and "width_mult" in takes:
        params["width_mult"] = params.pop("width")
    return raw


def recipe_from(recipe, overrides=(), sections=None):
    """A validated Recipe from a Recipe, a dict of sections, or a YAML file / shipped recipe name."""
    if isinstance(recipe, Recipe):  # the fields it set, so a default stays a default (runtime.check_backend asks)
        return _apply(recipe.model_dump(mode="json", exclude_unset=True), overrides, sections, recipe.name)
    if isinstance(recipe, dict):
        return _apply(copy.deepcopy(recipe), overrides, sections, "recipe")
    return load_recipe(recipe, overrides, sections)


def _apply(raw, overrides, sections, source):
    for section, fields in (sections or {}).items():
        if isinstance(fields, dict) and isinstance(raw.get(section), dict):
            raw[section] = _merged(raw[section], fields)
        else:
            raw[section] = fields
    for item in overrides:
        apply_override(raw, item)
    return validate(raw, source=source)


def _merged(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(raw, item):
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (3, 0.1, true, [1, 2])."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE such as train.epochs=3")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def validate(raw, source="recipe"):
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(f"{source}: invalid recipe\n" + explain(exc)) from None
    problems = registry_problems(recipe)
    if problems:
        raise RecipeError(f"{source}: invalid recipe\n" + "\n".join(f"  {p}" for p in problems))
    return recipe


def registry_problems(recipe):
    """Names and arguments checked against the registries' catalog (no TensorFlow): the model and
    its parameters, every augmentation op and its arguments, the data source and its fields."""
    cat = catalog.load()
    problems = _model_problems(recipe.model, "model", cat)
    if recipe.train.data_filter is not None:
        problems += _model_problems(recipe.train.data_filter.proxy, "train.data_filter.proxy", cat)
    for i, op in enumerate(recipe.augment.ops):
        args = cat["augmentations"].get(op["name"])
        if args is None:
            problems.append(f"augment.ops[{i}]: unknown augmentation {op['name']!r}{suggest(op['name'], cat['augmentations'])}")
            continue
        for key in op:
            if key != "name" and key not in args:
                problems.append(f"augment.ops[{i}] ({op['name']}): no argument {key!r}{suggest(key, args)}")
    if recipe.data.source not in cat["sources"]:
        problems.append(f"data.source: unknown source {recipe.data.source!r}{suggest(recipe.data.source, cat['sources'])}")
    else:
        problems += _data_problems(recipe.data)
    return problems


def _model_problems(cfg, where, cat):
    model = cat["models"].get(cfg.name)
    if model is None:
        return [f"{where}.name: unknown model {cfg.name!r}{suggest(cfg.name, cat['models'])}"]
    return [f"{where}.params: model {cfg.name!r} has no parameter {key!r}{suggest(key, model['params'])}"
            for key in cfg.params if key not in model["params"]]


def _data_problems(cfg):
    """The data source's own field check (kclassify.data.spec), when the source module has one."""
    if importlib.util.find_spec("kclassify.data.spec") is None:
        return []

    return list(check_data(cfg))


def explain(exc):
    """One line per problem, naming the field; unknown keys get a close match."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc)
        if err["type"] == "extra_forbidden":
            section = ".".join(loc[:-1]) or "top level"
            hint = suggest(loc[-1], _field_names(loc[:-1]))
            lines.append(f"  unknown key {loc[-1]!r} in section {section!r}{hint}")
        elif isinstance(err.get("input"), dict):  # a check across fields: the message says it all
            lines.append(f"  {where or 'recipe'}: {err['msg']}")
        else:
            lines.append(f"  {where or 'recipe'}: {err['msg']} (given: {err.get('input')!r})")
    return "\n".join(lines)


def _field_names(loc):
    cls = Recipe
    for part in loc:
        field = cls.model_fields.get(part)
        sections = [t for t in (field.annotation, *get_args(field.annotation)) if isinstance(t, type)
                    and issubclass(t, BaseModel)] if field is not None else []  # Optional[Section] too
        if not sections:
            return []
        cls = sections[0]
    return list(cls.model_fields)
