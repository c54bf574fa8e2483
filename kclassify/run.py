"""The run folder, owned in one place.

    runs/<name>/
      recipe.yaml       the resolved recipe (what a resume must match)
      labels.json       class names, input shape, split sizes
      run.lock          who holds the folder (pid, host, command); a flock makes it exclusive
      ckpt/state.json   the commit point: steps and epochs done, history, plan, the checkpoint list
      ckpt/*.keras      checkpoints (model + optimizer state), each with its size and sha256
      model.keras       the final inference network
      metrics.json, history.csv, steps.csv, val_report.json, val_predictions.npz, exports, report.html

Everything that reads or writes these files asks a `Run`: fit and finetune create or resume one
(`Run.start`), evaluate, export, qat and prune open a finished one (`Run.load`). 
"""
import contextlib
import csv
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import yaml

from kclassify import runtime
from kclassify.data import load_data
from kclassify.errors import KClassifyError, ModelFileError, RecipeError
from kclassify.models.saving import MODEL_FILE, load_model, model_file
from kclassify.recipe import load_saved_recipe, migrate_saved, Recipe
LOCK_FILE = "run.lock"
_HELD_LOCKS = {}  # run folder -> open lock file descriptor (the flock lives as long as it)


class RunLocked(KClassifyError):
    """Another process is training in this run folder."""


def write_json(path, obj):
    """Write JSON atomically (a kill never leaves half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def read_json(path, default=None):
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return default


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def recipe_diff(old, new, prefix=""):
    """Differences that change training (output and verbosity may change on resume). A key the
    old recipe lacks counts only if the new value differs from the default (fields added later)."""

    defaults = Recipe().model_dump(mode="json")
    return _diff(old, new, defaults, prefix)


def _diff(old, new, defaults, prefix):
    out = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if path in ("output", "runtime.verbose", "evaluate"):
            continue
        a, b = old.get(key, (defaults or {}).get(key)), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, (defaults or {}).get(key) if isinstance(defaults, dict) else None, path + ".")
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def new_state():
    return {"epoch": 0, "step": 0, "phase": 0, "phase_step": 0, "train_seconds": 0.0, "history": [],
            "checkpoints": [], "file": None, "plan": None, "lr_scale": 1.0, "recoveries": []}


class Run:
    """One run folder. `Run.load(path)` opens an existing one; `Run.start(recipe)` creates or
    resumes one for training, holding its lock."""

    def __init__(self, path):
        self.dir = Path(path)
        self.state = None
        self.chief = True

    # ------------------------------------------------------------------ opening

    @classmethod
    def load(cls, path):
        """An existing run folder (it must hold recipe.yaml); ModelFileError otherwise."""
        run = cls(path)
        if not (run.dir / "recipe.yaml").is_file():
            raise ModelFileError(f"{run.dir} is not a kclassify run folder (no recipe.yaml inside)")
        return run

    @staticmethod
    def resolve(path):
        """A .keras file or a run folder -> (model file, Run or None). A .keras file inside a run
        folder (model.keras, a checkpoint) belongs to that run."""
        p = model_file(path)
        if Path(path).is_dir():
            return p, Run.load(path)
        for folder in (p.parent, p.parent.parent):
            if (folder / "recipe.yaml").is_file():
                return p, Run(folder)
        return p, None

    @classmethod
    def start(cls, recipe, out=None, fresh=False, command="fit", chief=True, echo=print):
        """The run folder for training `recipe`: locked (chief only), its saved state when it is
        resumable (same recipe), none when fresh. A changed recipe is refused."""
        run = cls(Path(out) if out else recipe.run_dir())
        run.chief = chief
        if chief:
            run._lock(command, echo)
        if fresh:
            shutil.rmtree(run.dir / "ckpt", ignore_errors=True)
        run.state = None if fresh else run.read_state()
        saved = run.dir / "recipe.yaml"
        if run.state is not None and saved.exists():
            diffs = recipe_diff(migrate_saved(yaml.safe_load(saved.read_text()) or {}), recipe.model_dump(mode="json"))
            if diffs:
                raise RecipeError(f"{run.dir} holds a run of a different recipe ({'; '.join(diffs[:5])}).\n"
                                  "  Use --fresh to start it over, or --out DIR for a new run folder.")
        elif run.state is not None:
            run.state = None
        return run

    def sync_after_cluster(self):
        """A non-chief worker reads the state only once the cluster has formed: by then the chief
        has taken the lock and discarded the checkpoints of a --fresh start."""
        if not self.chief:
            self.state = self.read_state()

    def _lock(self, command, echo):
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / LOCK_FILE
        key = str(path.resolve())
        if key in _HELD_LOCKS:
            return  # this process holds it already (a second phase, a test calling twice)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            held = read_json(path, {})
            raise RunLocked(f"{self.dir} is in use by process {held.get('pid', '?')} ({held.get('command', '?')} "
                            f"on {held.get('host', '?')}, since {held.get('started', '?')}); wait for it to finish "
                            "or train into another folder with --out DIR") from None
        previous = read_json(path, {})
        if previous.get("pid") and previous.get("pid") != os.getpid():
            echo(f"note: taking over the lock of process {previous['pid']} ({previous.get('command')}, "
                 f"since {previous.get('started')}), which is gone")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD_LOCKS[key] = fd

    def release(self):
        """Drop the lock (the end of a run; a killed process loses it with its file descriptors)."""
        key = str((self.dir / LOCK_FILE).resolve())
        fd = _HELD_LOCKS.pop(key, None)
        if fd is not None:
            (self.dir / LOCK_FILE).unlink(missing_ok=True)
            os.close(fd)

    # ------------------------------------------------------------------ reading

    def file(self, name):
        return self.dir / name

    @property
    def model_path(self):
        return self.dir / MODEL_FILE

    @property
    def recipe(self):
        return load_saved_recipe(self.dir / "recipe.yaml")

    @property
    def labels(self):
        return read_json(self.dir / "labels.json", {})

    @property
    def class_names(self):
        return self.labels.get("class_names")

    @property
    def metrics(self):
        return read_json(self.dir / "metrics.json", {})

    def load_model(self):
        return load_model(self.model_path)

    def data(self):
        """The run's data (train and validation splits), loaded as its recipe says."""

        recipe = self.recipe
        return load_data(recipe.data, recipe.runtime.seed, augment=recipe.augment)

    def read_state(self):
        state = read_json(self.dir / "ckpt" / "state.json")
        return None if state is None else {**new_state(), **state}

    def finished(self, epochs):
        return bool(self.state and self.state["epoch"] >= epochs and self.model_path.exists()
                    and self.state.get("done"))

    # ------------------------------------------------------------------ writing

    def write_json(self, name, obj):
        if self.chief:
            write_json(self.dir / name, obj)

    def begin(self, recipe, data, echo=print):
        """Write the resolved recipe and the label/input spec; report the data."""
        for note in data.notes:
            echo(f"note: {note}")
        if self.chief:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "recipe.yaml").write_text(recipe.to_yaml())
            self.write_json("labels.json", {"class_names": data.class_names, "input_shape": list(data.input_shape),
                                            "train_images": len(data.train), "val_images": len(data.val)})
        echo(f"data: {len(data.train)} train / {len(data.val)} val images, {len(data.class_names)} classes, "
             f"shape {data.input_shape}")
        if self.state is None:
            self.state = new_state()

    def commit(self):
        """Write the state (the commit point of a checkpoint) and history.csv from it."""
        if not self.chief:
            return
        (self.dir / "ckpt").mkdir(parents=True, exist_ok=True)
        write_json(self.dir / "ckpt" / "state.json", self.state)
        write_history_csv(self.state["history"], self.dir / "history.csv")

    def save_checkpoint(self, trainer, averages=None, keep=2):
        """Save the trainer (weights + optimizer) and the weight averages at the state's step, add
        the file with its size and sha256 to the state, commit, then drop the oldest beyond `keep`."""
        s = self.state
        name = f"step-{s['step']:08d}.keras"
        folder = self.dir / "ckpt"
        if not self.chief:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"tmp-{name}"
        trainer.save(tmp)
        os.replace(tmp, folder / name)
        entry = {"file": name, "step": s["step"], "phase": s["phase"], "phase_step": s["phase_step"],
                 "epoch": s["epoch"], "bytes": (folder / name).stat().st_size, "sha256": sha256(folder / name)}
        if averages is not None:
            avg = folder / f"step-{s['step']:08d}.avg.npz"
            np.savez(folder / "tmp.avg.npz", **averages)
            os.replace(folder / "tmp.avg.npz", avg)
            entry["averages"] = avg.name
        s["checkpoints"] = [c for c in s["checkpoints"] if c["file"] != name] + [entry]
        s["file"] = name
        dropped, s["checkpoints"] = s["checkpoints"][:-keep], s["checkpoints"][-keep:]
        self.commit()
        for old in dropped:
            (folder / old["file"]).unlink(missing_ok=True)
            if old.get("averages"):
                (folder / old["averages"]).unlink(missing_ok=True)
        return entry

    def good_checkpoints(self, echo=print):
        """The state's checkpoints, newest first, that are whole (size and sha256 match); a bad
        one is reported and skipped."""
        folder = self.dir / "ckpt"
        good = []
        for entry in reversed(self.state.get("checkpoints") or []):
            path = folder / entry["file"]
            why = None
            if not path.is_file():
                why = "is missing"
            elif path.stat().st_size != entry["bytes"]:
                why = f"is truncated ({path.stat().st_size:,} of {entry['bytes']:,} bytes)"
            elif sha256(path) != entry["sha256"]:
                why = "does not match its checksum"
            if why:
                echo(f"warning: checkpoint {path} {why}; falling back to the one before it")
            else:
                good.append(entry)
        return good

    def rewind(self, entry):
        """Take the state back to checkpoint `entry` (what training resumes from)."""
        s = self.state
        history = [h for h in s["history"] if h.get("step", 0) <= entry["step"]]
        keep = [c for c in s["checkpoints"] if c["step"] <= entry["step"]]
        s.update(step=entry["step"], phase=entry["phase"], phase_step=entry["phase_step"], epoch=entry["epoch"],
                 history=history, checkpoints=keep, file=entry["file"])

    def clear_final(self):
        """A run that trains again has no final model yet."""
        if self.chief:
            self.model_path.unlink(missing_ok=True)


@contextlib.contextmanager
def training_run(recipe, out, fresh, command, echo=print):
    """(run, strategy) for a training command: the folder locked and its state read (resumable),
    the runtime set up; strategy None when the run has already finished. The lock is released
    at the end, whatever happens."""

    run = Run.start(recipe, out, fresh, command, chief=runtime.is_chief(recipe.runtime), echo=echo)
    try:
        if run.finished(recipe.train.epochs):
            verb = "trained" if command == "fit" else "fine-tuned"
            echo(f"{run.dir}: already {verb} for {run.state['epoch']} epochs (use --fresh to start over)")
            yield run, None
            return
        strategy = runtime.setup(recipe.runtime, echo)
        run.sync_after_cluster()
        yield run, strategy
    finally:
        run.release()


def write_history_csv(history, path):
    if not history:
        return
    keys = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
