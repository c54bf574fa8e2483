"""What `fit` and `finetune` refuse by name, checked right after the recipe loads and before
TensorFlow is imported (the TensorFlow-free boundary: this module imports only the recipe schema,
the catalogue and TensorFlow-free helpers)."""
from kclassify import catalog
from kclassify.errors import RecipeError
from kclassify.recipe import FinetuneConfig, PhaseConfig
from kclassify.train.budget import check_budget_recipe
from kclassify.train.unfreeze import check_group, parse_schedule


def check_fit_recipe(recipe):
    """Fields `fit` cannot honour are refused by name, before anything runs."""
    if recipe.finetune != FinetuneConfig():
        changed = [k for k, v in recipe.finetune.model_dump().items() if v != FinetuneConfig().model_dump()[k]]
        raise RecipeError(f"finetune.{changed[0]} is read by `kclassify finetune`, not by `kclassify fit` "
                          "(remove the finetune section, or run kclassify finetune)")
    check_budget_recipe(recipe, "fit")
    if recipe.train.data_filter is not None and recipe.runtime.strategy != "default":
        # The proxy learns inside a tf.cond, where a replica context cannot merge its gradients.
        raise RecipeError(f"train.data_filter runs on one device; not with runtime.strategy {recipe.runtime.strategy} yet")
    if recipe.train.low_res is not None and recipe.train.distill is not None:
        raise RecipeError("train.low_res with train.distill: the teacher would see the smaller images too")


def resolve_phases(recipe, schedule=None):
    """The recipe with finetune.phases filled from --unfreeze-schedule (recorded in recipe.yaml)."""
    ft = recipe.finetune
    if schedule:
        ft.phases = [PhaseConfig(**p) for p in parse_schedule(schedule)]
    if ft.mode == "phases" and not ft.phases:
        raise RecipeError("no fine-tuning phases: pass --unfreeze-schedule \"head:3,top2:3,all:6\" "
                          "or set finetune.phases in the recipe")
    for phase in ft.phases:
        check_group(phase.unfreeze)
        if phase.lr is None:
            phase.lr = recipe.train.lr * (1.0 if phase.unfreeze == "head" else ft.unfrozen_lr_scale)
        if phase.backbone_lr_mult is None:
            phase.backbone_lr_mult = ft.backbone_lr_mult
    recipe.train.epochs = sum(p.epochs for p in ft.phases) or recipe.train.epochs
    return recipe


def check_finetune_recipe(recipe):
    """Fields the phased loop cannot honour are refused by name."""
    t = recipe.train
    check_budget_recipe(recipe, "finetune")
    for name, value in (("warmup_epochs", t.warmup_epochs), ("warmup_fraction", t.warmup_fraction),
                        ("step_milestones", t.step_milestones), ("whiten_bias_epochs", t.whiten_bias_epochs),
                        ("bn_freeze_scale", t.bn_freeze_scale), ("bn_bias_lr_mult", t.bn_bias_lr_mult != 1.0)):
        if value:
            raise RecipeError(f"train.{name} is not honoured by kclassify finetune: each phase runs its own "
                              "schedule from its own learning rate (finetune.phases[].lr)")
    if recipe.model.init != "default":
        raise RecipeError("model.init is for training from scratch; kclassify finetune starts from pretrained weights")
    if t.low_res is not None:
        raise RecipeError("train.low_res is read by kclassify fit: a pretrained backbone's phases train at the "
                          "data's size")
    if t.data_filter is not None:
        raise RecipeError("train.data_filter is read by kclassify fit: a proxy trained from scratch cannot rank "
                          "images for a pretrained backbone")
    if not catalog.load()["models"].get(recipe.model.name, {}).get("backbone"):
        raise RecipeError(f"model {recipe.model.name!r} is not a backbone model: use one of the keras_* models "
                          "(kclassify models list), e.g. keras_mobilenet, or keras_kclassify with weights=RUN/model.keras")
