"""An max-drop limit for quantized exports: `kclassify export RUN --tflite --quant int8
--max-drop 0.5` (or `output.max_drop` in the recipe) ships the int8 file with the fewest layers
kept in float whose top-1 is within 0.5 point of the float model.

The search never looks at the evaluation split: it measures on a held-out part of the training
split (calibration.search_indices; calibration never draws from it), and the evaluation split is
measured once, on the file it ships (ExportJob.export). Each step is an attempt in the report:

1. the plain export (the recipe's calibration count); within max_drop: done;
2. MORE_CALIBRATION times as many calibration images, where the training split has them; it
   becomes the base of the next steps when it lowers the drop;
3. the quantization debugger ranks the Keras layers by their own error (debug.py); the worst goes
   to float, then the next, one group (the ops of one Keras layer) at a time, each added to
   the ones before. A layer that lowers the drop stays in float; one that raises it goes back to
   int8; one that leaves the drop unchanged stays for now: a layer ruined further on hides what
   floating this one gains (with two ruined layers neither helps alone, in either order). The
   forward pass stops at the first set within max_drop;
4. pruning: each layer that stayed without a gain is tried back in int8, last first, and goes
   back where the drop stays within max_drop (or, max_drop not met, no worse than the best): the
   file shipped has no float layer that the search images do not need;
5. after `max_float` layers tried without meeting max_drop, the attempt with the smallest drop
   (the fewer float layers on a tie) is shipped with a message that max_drop was not met.

Every drop comes with the half-width of its 95% interval (drop_margin: paired, so only the images
where float and int8 disagree count). A few hundred images resolve about a point, so a max_drop below
the margin is said to be beyond what the search can tell, in the message and the report.

Calibration is done once per calibration set (convert.Quantizer); an attempt costs one
quantization pass and one LiteRT run over the held-out images.
"""
import tempfile
from pathlib import Path

import numpy as np

from kclassify.inference import predict
from kclassify.kit import kitlib
from kclassify.tflite.convert import Quantizer
from kclassify.tflite.debug import layer_errors, layer_groups
from kclassify.tflite.modes import get_mode

MORE_CALIBRATION = 4
MAX_FLOAT_LAYERS = 10
LATENCY_RUNS = 50


def search(job, quant, max_drop, max_float=None, echo=print):
    """(.tflite bytes, search summary for the report) for ExportJob `job` in mode `quant`."""
    mode = get_mode(quant)
    max_float = MAX_FLOAT_LAYERS if max_float is None else max_float
    _, images, labels = job.search
    float_correct = np.asarray(predict(job.model, images)).argmax(1) == np.asarray(labels)
    kept_out = "kept out of training" if job.search_unseen else "trained on: output.max_drop_holdout keeps them out"
    echo(f"max-drop limit: {quant} top-1 at most {max_drop:g} point(s) below float, measured on {len(labels)} "
         f"held-out training images ({kept_out}; float {float_correct.mean() * 100:.2f}%); the evaluation split is "
         "measured once, at the end")
    with tempfile.TemporaryDirectory(prefix="kclassify-max-drop-") as folder:
        trial = Trials(Path(folder), images, labels, float_correct, max_drop, mode, echo)
        base = Quantizer(job.model, quant, job.calibration)
        row = trial.say(trial.run(base, [], "plain"))
        if not row["within_max_drop"]:
            base, row = _more_calibration(job, quant, trial, base, row)
        if not row["within_max_drop"]:
            _float_search(trial, base, row, max_float)
        blob, summary = trial.result(max_float)
        summary["search_images_trained_on"] = not job.search_unseen
        return blob, summary


def _more_calibration(job, quant, trial, base, base_row):
    """(quantizer, attempt) of MORE_CALIBRATION x the calibration images where the training split
    has more, if that lowers the drop; else the ones given."""
    more = job.calibration_for(len(job.calibration) * MORE_CALIBRATION)
    if len(more) <= len(job.calibration):
        return base, base_row
    richer = Quantizer(job.model, quant, more)
    row = trial.run(richer, [], f"{MORE_CALIBRATION}x calibration images")
    better = row["drop_points"] < base_row["drop_points"]
    if not better:
        row["note"] += " (no gain: not used)"
    trial.say(row)
    return (richer, row) if better else (base, base_row)


def _float_search(trial, quantizer, base_row, max_float):
    kept, unproven, last = [], [], base_row
    for group in layer_groups(layer_errors(quantizer))[:max_float]:
        row = trial.run(quantizer, kept + [group], f"+ {group[0]}")
        if row["rejected"]:
            pass
        elif row["drop_points"] < last["drop_points"]:
            kept, last = kept + [group], row
        elif row["drop_points"] == last["drop_points"]:
            row["note"] += " (no gain yet: a later layer may hide it; stays in float, pruned at the end if unneeded)"
            kept, unproven, last = kept + [group], unproven + [group], row
        else:
            row["note"] += " (worse: back to int8)"
        trial.say(row)
        if row["within_max_drop"]:
            break
    _prune(trial, quantizer, kept, unproven, last)


def _prune(trial, quantizer, kept, unproven, last):
    """Each float layer kept without a gain goes back to int8 where the drop stays within max_drop
    (max_drop not met: no worse than `last`), last kept first."""
    target = trial.max_drop if last["within_max_drop"] else last["drop_points"]
    for group in reversed(unproven):
        fewer = [g for g in kept if g is not group]
        if not fewer:
            continue  # no layer in float: the base file, already measured
        row = trial.run(quantizer, fewer, f"- {group[0]} (pruning)")
        if not row["rejected"] and row["drop_points"] <= target:
            row["note"] += ": not needed, back to int8"
            kept = fewer
        else:
            row["note"] += ": needed, stays in float"
        trial.say(row)


class Trials:
    """The attempts of one search: each file written, measured on the held-out images, kept."""

    def __init__(self, folder, images, labels, float_correct, max_drop, mode, echo):
        self.folder, self.images, self.labels = folder, images, labels
        self.float_correct, self.float_top1 = float_correct, float(float_correct.mean())
        self.max_drop, self.mode, self.echo = max_drop, mode, echo
        self.rows, self.blobs = [], []

    def run(self, quantizer, groups, note):
        kit = kitlib
        blob = quantizer.quantize([n for _, nodes in groups for n in nodes])
        path = self.folder / f"attempt{len(self.rows) + 1}.tflite"
        path.write_bytes(blob)
        model = kit.Classifier(path)
        probs = model.predict(self.images)
        correct = np.asarray(probs).argmax(1) == np.asarray(self.labels)
        top1 = float(correct.mean())
        drop = round((self.float_top1 - top1) * 100, 3)
        margin = round(drop_margin(self.float_correct, correct), 3)
        input_type = np.dtype(model.input["dtype"]).name
        row = {"attempt": len(self.rows) + 1, "note": note, "calibration_images": len(quantizer.calibration),
               "float_layers": [name for name, _ in groups], "search_top1": top1, "drop_points": drop,
               "drop_margin95": margin,
               "within_max_drop": bool(drop <= self.max_drop), "size_bytes": len(blob),
               "latency_ms_1t": kit.latency(path, 1, LATENCY_RUNS)["median_ms"], "input": input_type,
               "rejected": input_type != self.mode.input_type}
        if row["rejected"]:  # the file would no longer take what the mode promises (raw uint8 pixels)
            row.update(within_max_drop=False, note=f"{note} (rejected: the file's input would be {input_type})")
        self.rows.append(row)
        self.blobs.append(blob)
        return row

    def say(self, row):
        floats = f"{len(row['float_layers'])} layer(s) in float" if row["float_layers"] else "no layer in float"
        self.echo(f"  attempt {row['attempt']} ({row['note']}): {floats}, {row['calibration_images']} calibration "
                  f"images: top-1 {row['search_top1'] * 100:.2f}%, drop {row['drop_points']:.2f} "
                  f"(+/- {row['drop_margin95']:.2f}) {'<=' if row['within_max_drop'] else '>'} {self.max_drop:g}")
        return row

    def result(self, max_float):
        """The file to ship and the summary: the attempt within max_drop with the fewest float layers
        (then the smaller drop), else the best drop (then the fewer float layers)."""
        valid = [r for r in self.rows if not r["rejected"]]
        met = [r for r in valid if r["within_max_drop"]]
        if met:
            chosen = min(met, key=lambda r: (len(r["float_layers"]), r["drop_points"], r["attempt"]))
        else:
            chosen = min(valid, key=lambda r: (r["drop_points"], len(r["float_layers"]), r["attempt"]))
        plain = self.rows[0]
        latency = self._latency(plain, chosen)
        summary = {"max_drop_points": self.max_drop, "met": bool(met), "search_images": len(self.labels),
                   "float_top1_search": self.float_top1, "chosen_attempt": chosen["attempt"],
                   "float_layers": chosen["float_layers"], "calibration_images": chosen["calibration_images"],
                   "drop_points_search": chosen["drop_points"], "drop_margin95_search": chosen["drop_margin95"],
                   "size_bytes": chosen["size_bytes"],
                   "plain_size_bytes": plain["size_bytes"], "latency_ms_1t": latency, "limit_float_layers": max_float,
                   "attempts": self.rows}
        cost = (f"{chosen['size_bytes'] - plain['size_bytes']:+,} bytes, latency x{latency['ratio']:.2f} "
                f"against the plain {self.mode.name} file")
        names = ", ".join(chosen["float_layers"]) or "none"
        if met:
            summary["message"] = (f"max-drop met by attempt {chosen['attempt']}: drop {chosen['drop_points']:.2f} <= "
                                  f"{self.max_drop:g} point(s) with {len(chosen['float_layers'])} layer(s) in float "
                                  f"({names}), {chosen['calibration_images']} calibration images; {cost}")
        else:
            summary["message"] = (f"max-drop NOT met: after {len(self.rows)} attempts (limit: the {max_float} worst "
                                  f"layers tried in float) the best drop is {chosen['drop_points']:.2f} > "
                                  f"{self.max_drop:g} point(s), attempt {chosen['attempt']} ({names} in float); "
                                  f"shipping it; {cost}")
        if chosen["drop_margin95"] > self.max_drop:
            summary["resolution_note"] = (
                f"{len(self.labels)} search images resolve a drop to +/- {chosen['drop_margin95']:.2f} point(s) (95%), "
                f"more than max_drop {self.max_drop:g}: the search cannot tell such a file from one within it")
            summary["message"] += f"; note: {summary['resolution_note']}"
        self.echo(summary["message"])
        return self.blobs[chosen["attempt"] - 1], summary

    def _latency(self, plain, chosen, rounds=3):
        """Batch-1 latency of the plain and chosen files, interleaved rounds (medians)."""
        if chosen is plain:
            return {"plain": plain["latency_ms_1t"], "chosen": plain["latency_ms_1t"], "ratio": 1.0}
        kit = kitlib
        paths = [self.folder / f"attempt{r['attempt']}.tflite" for r in (plain, chosen)]
        times = [[], []]
        for _ in range(rounds):
            for i, path in enumerate(paths):
                times[i].append(kit.latency(path, 1, LATENCY_RUNS * 2)["median_ms"])
        a, b = (float(np.median(t)) for t in times)
        return {"plain": a, "chosen": b, "ratio": b / a}


def drop_margin(float_correct, quant_correct, z=1.96):
    """Half-width, in points, of the normal-approximation 95% interval of the top-1 drop between two
    models measured on the same images (paired: per image, d = float right - quantized right, in
    {-1, 0, 1}; only the images where the two disagree carry variance)."""
    d = np.asarray(float_correct, np.float64) - np.asarray(quant_correct, np.float64)
    n = len(d)
    return float(z * np.sqrt(max(np.mean(d * d) - np.mean(d) ** 2, 0.0) / n) * 100) if n else 0.0
