"""What an epoch shows while it runs (train/progress.py), on a fake clock: plain lines on a pipe
every 30 s with the step, the time left in the epoch, loss, top-1, images/s and the budget left;
nothing between epoch lines at verbose 0 or 2; images/s from the steps run since the epoch began."""
from types import SimpleNamespace

import pytest

from conftest import FakeClock
from kclassify.train.progress import EpochProgress


def run_epoch(verbose, budget=None, steps=100, seconds_a_step=1.0):
    clock, lines = FakeClock(tick=0.0), []
    progress = EpochProgress(steps, 32, clock, verbose, lines.append, budget)
    progress.start(epoch=2, total_epochs=5, done=10)  # a run resumed mid-epoch at step 10
    for done in range(11, steps + 1):
        clock.advance(seconds_a_step)
        progress.update(done, {"loss": 1.5, "top1": 0.25})
    progress.end()
    return lines, progress, clock


def test_on_a_pipe_a_line_every_30_seconds_says_where_the_epoch_is():
    budget = SimpleNamespace(deadline=1_000_000.0 + 600.0)
    lines, progress, _ = run_epoch("auto", budget)
    assert len(lines) == 2  # at 30 s and 60 s of 90 s (the epoch's end has its own line)
    assert lines[0] == ("  epoch 3/5 step 40/100 - 60 s left in the epoch - loss 1.5 - top1 0.25 - images/s 32 - "
                        "budget min 9.5")
    assert progress.images_per_second(100) == pytest.approx(32.0)


@pytest.mark.parametrize("verbose", [0, 2])
def test_verbose_0_and_2_print_only_the_epoch_lines(verbose):
    lines, _, _ = run_epoch(verbose)
    assert lines == []


def test_a_run_reports_its_training_images_a_second_and_the_arithmetic_rate_they_make():
    from kclassify.commands.finish import training_speed
    from kclassify.commands.profile import profile_model
    from kclassify.models import build_model

    model = build_model("resnet20", 10, (8, 8, 1))
    history = [{"images_per_s": 300.0}, {"images_per_s": 2000.0}, {"images_per_s": 2400.0}, {"images_per_s": 2200.0}]
    speed = training_speed(history, model)
    assert speed["train_images_per_s"] == 2200.0  # the median epoch after the first (which compiles)
    assert speed["train_gflops"] == round(6 * profile_model(model)["macs"] * 2200.0 / 1e9, 2) > 0
    assert training_speed(history[:1], model)["train_images_per_s"] == 300.0
    assert training_speed([{"epoch": 0}], model) == {}
