"""`kclassify export RUN --tflite --compare`: every mode of the table, one comparison table
(Markdown and JSON): size, top-1, agreement with Keras, max probability difference, batch-1
latency with 1 and 2 threads, and what the XNNPACK delegate did not take."""
import json
from pathlib import Path

from kclassify.errors import ExportError
from kclassify.kit import kitlib
from kclassify.tflite.modes import MODES


def compare_modes(job, modes=None, folder=None, threads=(1, 2), runs=100, rounds=3, echo=print):
    """Export every mode into `folder` (default RUN/compare), measure, write compare.md/.json."""
    kit = kitlib
    folder = Path(folder or (job.run_dir or job.source.parent) / "compare")
    rows = []
    failed = {}
    for name in modes or list(MODES):
        echo(f"exporting {name} ...")
        try:
            rep = job.export(name, folder / f"model_{name}.tflite", max_drop=None)  # the plain modes
        except ExportError as exc:  # one mode the model cannot take must not lose the others
            echo(f"  {name} failed: {exc}")
            failed[name] = str(exc)
            continue
        rows.append({"mode": name, "file": rep["file"], "size_bytes": rep["size_bytes"],
                     "top1": rep["tflite"]["top1"], "keras_top1": rep["keras"]["top1"],
                     "agreement": rep["agreement"], "max_prob_diff": rep["max_prob_diff"],
                     "input": rep["input"]["dtype"], "output": rep["output"]["dtype"],
                     "delegate": kit.delegate_report(rep["file"])})
    # Latency in interleaved rounds (every mode once per round, median of the rounds), so a
    # busy moment on a noisy machine hits all modes alike and the ratios stay meaningful.
    for t in threads:
        per_mode = {r["mode"]: [] for r in rows}
        for _ in range(rounds):
            for r in rows:
                per_mode[r["mode"]].append(kit.latency(r["file"], t, runs)["median_ms"])
        for r in rows:
            r[f"latency_ms_{t}t"] = sorted(per_mode[r["mode"]])[rounds // 2]
    base = next((r for r in rows if r["mode"] == "float32"), rows[0])
    for r in rows:
        r["size_ratio"] = r["size_bytes"] / base["size_bytes"]
        r["speedup_1t"] = base[f"latency_ms_{threads[0]}t"] / r[f"latency_ms_{threads[0]}t"]
    table = format_table(rows, threads, len(job.val))
    table += "".join(f"\n\n{name}: not exported ({why})" for name, why in failed.items())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.md").write_text(table + "\n")
    (folder / "compare.json").write_text(json.dumps({"source": str(job.source), "eval_images": len(job.val.labels),
                                                      "threads": list(threads), "rows": rows, "failed": failed}, indent=1))
    echo(table)
    echo(f"wrote {folder / 'compare.md'} and compare.json")
    return rows


def format_table(rows, threads, count):
    lat = " | ".join(f"ms @{t}T" for t in threads)
    head = (f"| mode | I/O | size | x float32 | top-1 ({count} images) | agreement | max prob diff | {lat} "
            f"| speed x float32 (1T) | XNNPACK: ops, partitions, left out |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        d = r["delegate"]
        left = ", ".join(f"{k} {v}" for k, v in d["not_delegated"].items()) or "-"
        lats = " | ".join(f"{r[f'latency_ms_{t}t']:.3f}" for t in threads)
        lines.append(f"| {r['mode']} | {r['input']}/{r['output']} | {r['size_bytes'] / 1e6:.3f} MB | "
                     f"{r['size_ratio']:.3f} | {r['top1'] * 100:.2f}% | {r['agreement'] * 100:.2f}% | "
                     f"{r['max_prob_diff']:.4f} | {lats} | {r['speedup_1t']:.2f} | "
                     f"{d['delegated']}/{d['ops']}, {d['partitions']}, {left} |")
    return "\n".join(lines)
