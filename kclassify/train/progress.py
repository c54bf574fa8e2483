"""What a training epoch shows while it runs (an epoch of cifar10_fast takes 3-4 minutes on two
CPU cores): Keras' progress bar on a terminal (step of the epoch, time left, loss, top-1 and
images/s; a budgeted run also the minutes its budget has left), plain lines every `every` seconds
where the output is a pipe or a log file. runtime.verbose: auto (that choice), 1 (the bar), 2 or 0
(the epoch lines only)."""
import sys

import keras

SHOWN = ("loss", "top1")


class EpochProgress:
    def __init__(self, steps_per_epoch, batch, clock, verbose="auto", echo=print, budget=None, every=30.0):
        self.spe, self.batch, self.clock, self.echo, self.budget = steps_per_epoch, batch, clock, echo, budget
        interactive = sys.stdout.isatty()
        self.mode = {"auto": "bar" if interactive else "lines", 1: "bar", 2: None, 0: None}[verbose]
        self.every = every
        self.bar = None

    def start(self, epoch, total_epochs, done):
        """Epoch `epoch` (0-based) of `total_epochs` begins with `done` of its steps already run."""
        self.epoch, self.total, self.first = epoch, total_epochs, done
        self.began = self.last_line = self.clock()
        if self.mode == "bar":
            self.bar = keras.utils.Progbar(self.spe, stateful_metrics=SHOWN + ("images/s", "budget min"))
            self.bar.update(done)

    def images_per_second(self, done):
        """Training images a second since the epoch began (`done` steps of it run)."""
        return (done - self.first) * self.batch / max(self.clock() - self.began, 1e-9)

    def update(self, done, logs):
        """`done` steps of the epoch have run; `logs` are the step's (running means). Read at most
        once a second: reading a step's loss waits for the step, which a GPU would rather not."""
        now = self.clock()
        due = self.every if self.bar is None else 1.0
        if self.mode is None or now - self.last_line < due or done >= self.spe:
            return
        self.last_line = now
        values = [(k, float(logs[k])) for k in SHOWN if k in logs] + [("images/s", self.images_per_second(done))]
        if self.budget is not None:
            values.append(("budget min", max(self.budget.deadline - now, 0.0) / 60))
        if self.bar is not None:
            self.bar.update(done, values)
        else:
            left = (self.spe - done) * (now - self.began) / max(done - self.first, 1)
            self.echo(f"  epoch {self.epoch + 1}/{self.total} step {done}/{self.spe} - {left:.0f} s left in the epoch - "
                      + " - ".join(f"{k} {v:.4g}" for k, v in values))

    def end(self):
        if self.bar is not None:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.bar = None
