"""Strict recipes: typos and bad values fail at load time with the field and a suggestion,
before TensorFlow is imported."""
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
from kclassify.errors import RecipeError
from kclassify.recipe import apply_override, load_recipe, shipped_recipes, validate


def test_every_shipped_recipe_validates():
    names = shipped_recipes()
    assert {"quickstart", "cifar10_cpu", "cifar100"} <= set(names)
    for name in names:
        assert load_recipe(name).name == name


def test_unknown_key_names_section_and_suggests():
    with pytest.raises(RecipeError) as err:
        validate({"train": {"epcohs": 3}})
    assert "unknown key 'epcohs' in section 'train'" in str(err.value)
    assert "did you mean 'epochs'" in str(err.value)


def test_the_suggestion_is_the_name_fewest_edits_away():
    from kclassify.registry import edit_distance, suggest

    with pytest.raises(RecipeError, match="did you mean 'resnet20'"):  # difflib alone says 'resnet32'
        validate({"model": {"name": "resnet2O"}})
    assert suggest("lenght", ["length", "fill"]) == " (did you mean 'length'?)"
    assert suggest("zzz", ["a", "b"]) == "; valid: a, b"
    assert [edit_distance(*p) for p in (("kitten", "sitting"), ("", "ab"), ("same", "same"))] == [3, 2, 0]


def test_unknown_section_suggests():
    with pytest.raises(RecipeError, match="did you mean 'augment'"):
        validate({"augmnet": {}})


@pytest.mark.parametrize("field,value,needle", [
    ("epochs", 0, "train.epochs"), ("lr", "fast", "train.lr"), ("optimizer", "adam", "train.optimizer"),
    ("label_smoothing", 1.5, "train.label_smoothing")])
def test_wrong_type_or_range_names_field_and_value(field, value, needle):
    with pytest.raises(RecipeError) as err:
        validate({"train": {field: value}})
    assert needle in str(err.value) and repr(value) in str(err.value)


def test_milestones_must_lie_inside_training():
    with pytest.raises(RecipeError, match="step_milestones"):
        validate({"train": {"epochs": 10, "schedule": "step", "step_milestones": [5, 12]}})


def test_overrides_parse_yaml_values():
    recipe = load_recipe("quickstart", ["train.epochs=3", "train.lr=0.2", "augment.flip=true",
                                        "train.step_milestones=[1, 2]", "model.params.width_mult=2"])
    assert (recipe.train.epochs, recipe.train.lr, recipe.augment.flip) == (3, 0.2, True)
    assert recipe.train.step_milestones == [1, 2] and recipe.model.params == {"width_mult": 2}


def test_override_without_equals_is_rejected():
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        apply_override({}, "train.epochs")


def test_missing_recipe_suggests_shipped_name():
    with pytest.raises(RecipeError, match="did you mean 'quickstart'"):
        load_recipe("quikstart")


def test_validation_does_not_import_tensorflow():
    code = ("import sys, kclassify.recipe as r; r.load_recipe('cifar100', ['train.epochs=170']); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False False", out.stderr


@pytest.mark.parametrize("override, message", [
    ("model.name=resnet2O", "model.name: unknown model 'resnet2O' (did you mean"),
    ("model.params={width_mlt: 2}", "model 'resnet20' has no parameter 'width_mlt' (did you mean 'width_mult'?)"),
    ("model.name=resnet20", "model 'resnet20' has no parameter 'width'"),  # cifar10_cpu's resnet9 width: channels
    ("augment.ops=[{name: cutuot}]", "augment.ops[0]: unknown augmentation 'cutuot' (did you mean 'cutout'?)"),
    ("augment.ops=[{name: cutout, lenght: 8}]", "augment.ops[0] (cutout): no argument 'lenght' (did you mean 'length'?)"),
    ("output.export=[int9]", "output.export.0: Input should be"),
    ("data.source=digit", "data.source: unknown source 'digit' (did you mean 'digits'?)"),
])
def test_registry_typos_fail_at_load_before_tensorflow(override, message):
    """Model names and parameters, augmentation ops and their arguments, export modes and data
    fields are checked against the registries' TF-free catalogue when the recipe loads."""
    recipe = "cifar10_cpu" if override == "model.name=resnet20" else "quickstart"
    code = (f"import sys, kclassify.recipe as r\ntry:\n    r.load_recipe({recipe!r}, [{override!r}])\n"
            "except Exception as e:\n    print(e)\nprint('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert message in out.stdout and out.stdout.strip().endswith("False False"), out.stdout + out.stderr


def test_cli_unknown_key_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  source: digits\ntrain:\n  epcohs: 3\n")
    out = run_cli("fit", bad)
    assert out.returncode == 2
    assert "unknown key 'epcohs' in section 'train'" in out.stderr and "did you mean 'epochs'" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_bad_override_value(tmp_path):
    out = run_cli("fit", "quickstart", "--set", "train.batch_size=-4", "--out", tmp_path / "r")
    assert out.returncode == 2 and "train.batch_size" in out.stderr and "Traceback" not in out.stderr


def test_cli_without_tensorflow_says_how_to_install_it(tmp_path):
    """A Python where TensorFlow is missing (None in sys.modules makes its import fail as if absent)
    gets one line saying what to install, exit code 2, no traceback."""
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            f"sys.argv = ['kclassify', 'fit', 'quickstart', '--out', {str(tmp_path / 'r')!r}]\n"
            "from kclassify.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert "TensorFlow is not installed" in out.stderr and "pip install -e ." in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_recipes_list_and_show():
    listed = run_cli("recipes", "list")
    assert listed.returncode == 0 and "cifar10_cpu" in listed.stdout and "quickstart" in listed.stdout
    shown = run_cli("recipes", "show", "quickstart", "--resolved")
    assert shown.returncode == 0 and "bn_momentum: 0.9" in shown.stdout


def test_catalog_file_matches_the_live_registries():
    """The TF-free catalogue that checks recipes at load is the registries' own listing: a model
    registered without `python -m kclassify.commands.catalog --write` would be refused by name at load."""
    import json

    from kclassify.catalog import FILE
    from kclassify.commands.catalog import build

    assert json.loads(FILE.read_text()) == build(), "stale: run python -m kclassify.commands.catalog --write"


def test_a_run_saved_before_the_renames_still_loads(tmp_path):
    """A recipe.yaml written by an earlier version (output.budget_holdout, since removed; a CIFAR
    ResNet's width multiplier as `width`) loads from its run folder under today's names; a user's
    recipe with the old names is refused by name instead."""
    import yaml

    from kclassify.recipe import load_recipe
    from kclassify.run import Run

    old = load_recipe("quickstart").model_dump(mode="json")
    old["output"]["budget_holdout"] = False
    old["model"]["params"] = {"width": 0.5}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(old))
    recipe = Run.load(tmp_path).recipe
    assert recipe.model.params == {"width_mult": 0.5} and not hasattr(recipe.output, "budget_holdout")
    with pytest.raises(RecipeError, match="unknown key 'budget_holdout' in section 'output'"):
        load_recipe(tmp_path / "recipe.yaml")
