"""The int8 accuracy limit: `kclassify export RUN --tflite --quant int8 --max-drop 0.5` (or
`output.max_drop` in the recipe) ships the int8 file with the fewest layers kept in float whose
top-1 is within 0.5 point of the float model, on images the model has not trained on.

It decides without labels, so it cannot fit them: the measure is the flip rate, the share of
images whose top-1 class differs between the float model and the int8 file. A flip is needed for
an image to go from right to wrong, so the top-1 drop on any set of images is at most its flip
rate. The search measures flips on the evaluation split's images (the run's validation split,
never trained on; the --data images of a bare model); where those are too few to resolve the
limit it adds their mirrored and shifted views and says so before searching. A file is within
the limit when its flip rate is, on the images themselves and on all the views: its labelled
top-1 on the evaluation split, measured once at the end (ExportJob.export), then cannot fall more
than the limit below the float model's. Each step is an attempt in the report:

1. the plain export (the recipe's calibration count); within the limit: done;
2. MORE_CALIBRATION times as many calibration images, where the training split has them; it
   becomes the base of the next steps when it flips fewer images;
3. the quantization debugger ranks the Keras layers by their own error (debug.py); the worst goes
   to float, then the next, one group (the ops of one Keras layer) at a time, each added to
   the ones before. A layer that lowers the flips stays in float; one that raises them beyond
   the measurement's 95% margin goes back to int8; one that leaves them unchanged within it stays
   for now: a layer ruined further on hides what floating this one gains (with two ruined layers
   neither helps alone, in either order). The forward pass stops at the first set within the limit;
4. pruning: each layer that stayed without a gain is tried back in int8, last first, and goes
   back where the file stays within the limit (or, not met, no worse than the best): the file
   shipped has no float layer that the search images do not need;
5. after `max_float` layers tried without meeting the limit, the export is refused (MaxDropNotMet:
   no file written, exit code 2), with the fewest flips any attempt reached and what to do: a file
   the limit cannot vouch for is not shipped as if it could.

Every attempt's file carries biases corrected for the int8 weights' rounding (bias_correction.py;
`bias_correction=False` for none): on the two fine-tuned MobileNets measured it halved the flips
before any layer went to float.

Each flip rate comes with the half-width of its 95% interval (binomial): how far the rate on the
next images of the same kind may be from it. Calibration is done once per calibration set
(convert.Quantizer); an attempt costs one quantization pass and one LiteRT run over the images.
"""
import tempfile
from pathlib import Path

import numpy as np

from kclassify.errors import MaxDropNotMet
from kclassify.inference import predict
from kclassify.kit import kitlib
from kclassify.tflite.convert import Quantizer
from kclassify.tflite.debug import layer_errors, layer_groups
from kclassify.tflite.modes import get_mode

MORE_CALIBRATION = 4
MAX_FLOAT_LAYERS = 10
LATENCY_RUNS = 50


RESOLVE_IMAGES = 4  # a limit of L points wants at least this many flips' worth of images: 100 * 4 / L
SHIFTS = ((2, 0), (-2, 0), (0, 2), (0, -2))  # pixels (rows, columns) of the extra views, reflect-padded


def search_set(images, max_drop, mirror=True):
    """(images to measure flips on, how many of them are the originals, what was added): the
    evaluation images, then, while they are too few to resolve `max_drop`, their mirrored and
    shifted views (mirrored only where the run trained with flips)."""
    wanted = int(np.ceil(100.0 * RESOLVE_IMAGES / max_drop))
    views, added = [images], []
    makers = ([("mirrored", lambda x: x[:, :, ::-1])] if mirror else []) + [
        (f"shifted {dy:+d},{dx:+d}", lambda x, dy=dy, dx=dx: shift(x, dy, dx)) for dy, dx in SHIFTS]
    for name, make in makers:
        if sum(len(v) for v in views) >= wanted:
            break
        views.append(make(images))
        added.append(name)
    return np.concatenate(views), len(images), added


def shift(images, dy, dx):
    """The images moved by (dy, dx) pixels, the border reflected (as the training crops pad)."""
    pad = max(abs(dy), abs(dx))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    return padded[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def search(job, quant, max_drop, max_float=None, echo=print, bias_correction=True):
    """(.tflite bytes, search summary for the report) for ExportJob `job` in mode `quant`; raises
    MaxDropNotMet where no attempt is within `max_drop`."""
    mode = get_mode(quant)
    max_float = MAX_FLOAT_LAYERS if max_float is None else max_float
    source, originals = job.search_images
    images, n, added = search_set(originals, max_drop, mirror=job.mirrored_views_ok)
    per_image = 100.0 / n
    echo(f"max-drop: {quant} top-1 at most {max_drop:g} point(s) below float; measured without labels as the "
         f"share of images whose top-1 class changes (flips bound the drop), on {n} {source}"
         + (f" and their {', '.join(added)} views ({len(images)} images in all: one image of {n} is "
            f"{per_image:.2f} point(s), too coarse for {max_drop:g} alone)" if added else "")
         + "; the labelled top-1 is measured once, at the end")
    float_top = np.asarray(predict(job.model, images)).argmax(1)
    with tempfile.TemporaryDirectory(prefix="kclassify-max-drop-") as folder:
        trial = Trials(Path(folder), images, n, float_top, max_drop, mode, echo)
        base = Quantizer(job.model, quant, job.calibration, bias_correction)
        row = trial.say(trial.run(base, [], "plain" + (", bias-corrected" if bias_correction else "")))
        if not row["within_max_drop"]:
            base, row = _more_calibration(job, quant, trial, base, row, bias_correction)
        if not row["within_max_drop"]:
            _float_search(trial, base, row, max_float)
        return trial.result(max_float, search_source=source, search_views=added)


def _more_calibration(job, quant, trial, base, base_row, bias_correction):
    """(quantizer, attempt) of MORE_CALIBRATION x the calibration images where the training split
    has more (and the caller gave none of its own), if that flips fewer images; else the ones given."""
    if job.calibration_given:
        return base, base_row
    more = job.calibration_for(len(job.calibration) * MORE_CALIBRATION)
    if len(more) <= len(job.calibration):
        return base, base_row
    richer = Quantizer(job.model, quant, more, bias_correction)
    row = trial.run(richer, [], f"{MORE_CALIBRATION}x calibration images")
    better = row["flip_points"] < base_row["flip_points"]
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
        elif row["flip_points"] < last["flip_points"]:
            kept, last = kept + [group], row
        elif row["flip_points"] <= last["flip_points"] + last["flip_margin95"]:
            # unchanged within the measurement's noise: a layer ruined further on can hide a real gain
            row["note"] += " (no gain yet: a later layer may hide it; stays in float, pruned at the end if unneeded)"
            kept, unproven, last = kept + [group], unproven + [group], row
        else:
            row["note"] += " (worse: back to int8)"
        trial.say(row)
        if row["within_max_drop"]:
            break
    _prune(trial, quantizer, kept, unproven, last)


def _prune(trial, quantizer, kept, unproven, last):
    """Each float layer kept without a gain goes back to int8 where the file stays within max_drop
    (not met: no worse than `last`), last kept first."""
    target = trial.max_drop if last["within_max_drop"] else last["flip_points"]
    for group in reversed(unproven):
        fewer = [g for g in kept if g is not group]
        if not fewer:
            continue  # no layer in float: the base file, already measured
        row = trial.run(quantizer, fewer, f"- {group[0]} (pruning)")
        if not row["rejected"] and row["flip_points"] <= target:
            row["note"] += ": not needed, back to int8"
            kept = fewer
        else:
            row["note"] += ": needed, stays in float"
        trial.say(row)


class Trials:
    """The attempts of one search: each file written, its flips counted on the search images, kept."""

    def __init__(self, folder, images, originals, float_top, max_drop, mode, echo):
        self.folder, self.images, self.originals, self.float_top = folder, images, originals, float_top
        self.max_drop, self.mode, self.echo = max_drop, mode, echo
        self.rows, self.blobs = [], []

    def run(self, quantizer, groups, note):
        blob = quantizer.quantize([n for _, nodes in groups for n in nodes])
        path = self.folder / f"attempt{len(self.rows) + 1}.tflite"
        path.write_bytes(blob)
        model = kitlib.Classifier(path)
        flipped = np.asarray(model.predict(self.images)).argmax(1) != self.float_top
        flips = round(float(flipped.mean()) * 100, 3)
        flips_originals = round(float(flipped[:self.originals].mean()) * 100, 3)
        input_type = np.dtype(model.input["dtype"]).name
        row = {"attempt": len(self.rows) + 1, "note": note, "calibration_images": len(quantizer.calibration),
               "float_layers": [name for name, _ in groups], "flip_points": max(flips, flips_originals),
               "flip_points_all": flips, "flip_points_originals": flips_originals,
               "flip_margin95": round(flip_margin(flips / 100, len(flipped)), 3),
               "within_max_drop": bool(max(flips, flips_originals) <= self.max_drop), "size_bytes": len(blob),
               "latency_ms_1t": kitlib.latency(path, 1, LATENCY_RUNS)["median_ms"], "input": input_type,
               "rejected": input_type != self.mode.input_type}
        if row["rejected"]:  # the file would no longer take what the mode promises (raw uint8 pixels)
            row.update(within_max_drop=False, note=f"{note} (rejected: the file's input would be {input_type})")
        self.rows.append(row)
        self.blobs.append(blob)
        return row

    def say(self, row):
        floats = f"{len(row['float_layers'])} layer(s) in float" if row["float_layers"] else "no layer in float"
        self.echo(f"  attempt {row['attempt']} ({row['note']}): {floats}, {row['calibration_images']} calibration "
                  f"images: flips {row['flip_points']:.2f} (+/- {row['flip_margin95']:.2f}) "
                  f"{'<=' if row['within_max_drop'] else '>'} {self.max_drop:g}")
        return row

    def result(self, max_float, **context):
        """The file to ship and the summary (with `context`): the attempt within max_drop with the
        fewest float layers (then the fewer flips); MaxDropNotMet, with the attempt of the fewest
        flips (then the fewer float layers), where none is within."""
        valid = [r for r in self.rows if not r["rejected"]]
        met = [r for r in valid if r["within_max_drop"]]
        if met:
            chosen = min(met, key=lambda r: (len(r["float_layers"]), r["flip_points"], r["attempt"]))
        else:
            chosen = min(valid, key=lambda r: (r["flip_points"], len(r["float_layers"]), r["attempt"]))
        plain = self.rows[0]
        latency = self._latency(plain, chosen)
        summary = {"max_drop_points": self.max_drop, "met": bool(met), "search_images": len(self.images),
                   "search_originals": self.originals, "chosen_attempt": chosen["attempt"],
                   "float_layers": chosen["float_layers"], "calibration_images": chosen["calibration_images"],
                   "flip_points_search": chosen["flip_points"], "flip_margin95_search": chosen["flip_margin95"],
                   "size_bytes": chosen["size_bytes"],
                   "plain_size_bytes": plain["size_bytes"], "latency_ms_1t": latency, "limit_float_layers": max_float,
                   "attempts": self.rows, **context}
        cost = (f"{chosen['size_bytes'] - plain['size_bytes']:+,} bytes, latency x{latency['ratio']:.2f} "
                f"against the plain {self.mode.name} file")
        names = ", ".join(chosen["float_layers"]) or "none"
        if met:
            summary["message"] = (f"max-drop met by attempt {chosen['attempt']}: flips {chosen['flip_points']:.2f} <= "
                                  f"{self.max_drop:g} point(s) with {len(chosen['float_layers'])} layer(s) in float "
                                  f"({names}), {chosen['calibration_images']} calibration images; {cost}")
        else:
            best = chosen["flip_points"] + chosen["flip_margin95"]
            summary["message"] = (
                f"max-drop NOT met, so no {self.mode.name} file is written: after {len(self.rows)} attempts (the "
                f"{max_float} worst layers tried in float) the fewest flips are {chosen['flip_points']:.2f} "
                f"(+/- {chosen['flip_margin95']:.2f}) > {self.max_drop:g} point(s) (attempt {chosen['attempt']}, "
                f"{names} in float; {cost}). Choose one: allow more (--max-drop {np.ceil(best * 10) / 10:g} covers that "
                f"attempt with its margin), try more layers in float (--max-float-layers {2 * max_float}), train the "
                f"int8 file (kclassify qat), or ship 16x8 (--quant 16x8: int16 activations, float32 in and out) or float16 "
                f"(--quant float16: half the size, no int8 loss)")
            raise MaxDropNotMet(summary["message"], summary)
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


def flip_margin(rate, n, z=1.96):
    """Half-width, in points, of the 95% interval of a flip rate measured on n images (binomial,
    normal approximation; a rate of 0 still gets the margin of one flip in n)."""
    rate = max(rate, 1.0 / n) if n else 0.0
    return float(z * np.sqrt(rate * (1 - rate) / n) * 100) if n else 0.0
