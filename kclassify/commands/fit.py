"""`kclassify fit`: recipe -> run folder -> data -> model -> the engine (one phase) -> final reports."""
import time

from kclassify import runtime
from kclassify.commands.checks import check_fit_recipe
from kclassify.commands.finish import finish_run
from kclassify.data import load_data
from kclassify.run import training_run
from kclassify.train.engine import Phase, low_res_shape
from kclassify.train.setup import build_filter, build_for_run, finish_training, fit_setup, make_engine


def fit(recipe, out=None, fresh=False, echo=print, callbacks=(), started=None, clock=time.time):
    """Train per the recipe into its run folder, resuming an interrupted run; returns the folder.
    `clock` is what a time budget reads (a test gives a fake one)."""
    started = started or runtime.command_started() or clock()
    check_fit_recipe(recipe)
    runtime.check_backend(recipe, runtime.keras_backend(), echo)
    with training_run(recipe, out, fresh, "fit", echo) as (run, strategy):
        if strategy is None:
            return run.dir
        data = load_data(recipe.data, recipe.runtime.seed, augment=recipe.augment)
        low_res_shape(recipe.train.low_res, data.train.image_shape)  # a size the images allow, before the model
        run.begin(recipe, data, echo)
        run.clear_final()
        model = build_for_run(recipe, data, strategy, fresh_start=not run.state["checkpoints"], echo=echo)
        engine = make_engine(recipe, run, data, model, strategy, echo, callbacks, started,
                             build_filter(recipe, data, strategy, echo), clock)
        engine.fit([Phase("fit", recipe.train, recipe.train.epochs, setup=lambda m: fit_setup(m, recipe.train))])
        finish_training(engine, echo)
        finish_run(run, model, data, recipe, echo, budget=engine.budget, started=started)
    return run.dir
