"""The HTML report of a run: every section renders in a real headless Chromium without console
errors or network requests, its figures equal metrics.json, TTA and exports appear when the
run has them, and a 1,000-class run stays readable (lists capped, and the page says so)."""
import json
import re
import shutil

import numpy as np
import pytest

import browser
from conftest import run_cli
from kclassify.errors import DataError
from kclassify.commands.report import CLASS_ROWS, PAIRS, SECTIONS, WRONG_IMAGES, calibration, write_html_report, write_run_report

SECTION_IDS = [sid for sid, _ in SECTIONS]


def needs_browser():
    why = browser.missing()
    if why:
        pytest.skip(f"browser check skipped: {why}")


def html_metrics(page):
    """{metric key: (exact value, shown text)} from the report's metric spans."""
    return {k: (v, text) for k, v, text in
            re.findall(r'<span class="metric" data-metric="([^"]+)" data-value="([^"]+)">([^<]+)</span>', page)}


def shown(value, pct):
    return f"{value:.2%}" if pct else f"{value:.4g}"


def assert_metrics_equal(found, metrics):
    """Every figure of metrics.json's val (and val_tta) is in the page, exactly and as shown."""
    for section in ("val", "val_tta"):
        for key, value in metrics.get(section, {}).items():
            if key not in ("top1", "top5", "loss"):  # views, tta: described, not figures
                continue
            exact, text = found[f"{section}.{key}"]
            assert float(exact) == value, (section, key)
            assert text == shown(value, key != "loss"), (section, key, text)
    for key in ("epochs", "params", "train_images", "val_images"):
        assert int(found[key][0]) == metrics[key]


@pytest.fixture(scope="module")
def run_copy(digits_run, tmp_path_factory):
    """A copy of the digits run (the shared fixture stays untouched), with a float32 export."""
    from kclassify.commands.export import export_tflite

    dest = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(digits_run, dest, ignore=shutil.ignore_patterns("ckpt"))
    export_tflite(dest, "float32", echo=lambda *a: None)
    return dest


def test_report_in_browser(run_copy, tmp_path):
    needs_browser()
    path = write_run_report(run_copy, echo=lambda *a: None)
    assert path == run_copy / "report.html"
    shot = tmp_path / "report.png"
    page = browser.open_page(path, screenshot=shot, sections=SECTION_IDS)
    assert page["console"] == [] and page["errors"] == []
    assert page["requests"] == [], "the report must not reach the network"
    assert page["ids"] == SECTION_IDS and all(page["visible"].values())
    # every image the file holds is in the page and decoded (how many depends on how many the model gets wrong)
    assert page["broken_images"] == [] and page["images"] == path.read_text().count("<img") > 2
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert_metrics_equal(page["metrics"], metrics)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot} ({page['height']} px tall)")


def test_report_content(run_copy, tmp_path):
    """Without a browser: self-contained, figures from the run's files, export row measured."""
    out = write_html_report(run_copy, tmp_path / "r.html", echo=lambda *a: None)
    page = out.read_text()
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:|#)', page)
    assert_metrics_equal(html_metrics(page), json.loads((run_copy / "metrics.json").read_text()))
    rep = json.loads((run_copy / "val_report.json").read_text())
    weakest = min(rep["per_class"], key=lambda c: c["f1"])
    first_row = re.search(r'<table class="classes">.*?</tr><tr[^>]*><td>1</td><td>([^<]+)', page).group(1)
    assert first_row == weakest["name"]
    export = json.loads((run_copy / "model_float32.json").read_text())
    assert f"{export['size_bytes']:,} B" in page and f"{export['agreement']:.2%}" in page
    assert re.search(r"model_float32\.tflite</td>(<td>[^<]*</td>){7}<td>[\d.]+ ms</td>", page)
    assert "no test-time augmentation" in page


def test_report_shows_tta(run_copy, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_copy, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["val_tta"] = {"top1": metrics["val"]["top1"] + 0.01, "top5": 1.0, "loss": 0.05, "tta": "flip", "views": 2}
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = write_html_report(run, run / "report.html", echo=lambda *a: None).read_text()
    assert "test-time augmentation (flip, 2 views)" in page
    assert_metrics_equal(html_metrics(page), metrics)


def test_report_reads_saved_predictions(run_copy, tmp_path):
    """val_predictions.npz is used when present; one from other data is refused."""
    from kclassify.run import Run

    run = tmp_path / "run"
    shutil.copytree(run_copy, run)
    labels = Run.load(run).data().val.labels
    perfect = np.eye(10, dtype=np.float32)[labels]
    np.savez(run / "val_predictions.npz", probs=perfect, labels=labels.astype(np.int32))
    page = write_html_report(run, run / "report.html", echo=lambda *a: None).read_text()
    assert "No validation image was misclassified" in page
    np.savez(run / "val_predictions.npz", probs=perfect[:-1], labels=labels[:-1].astype(np.int32))
    with pytest.raises(DataError, match="does not match"):
        write_html_report(run, run / "report.html", echo=lambda *a: None)


@pytest.mark.slow  # the slow tier (-m slow): keeps the fast tier under 8 minutes on 2 cores
def test_report_cli(run_copy, tmp_path):
    out = tmp_path / "cli.html"
    res = run_cli("report", run_copy, "--out", out)
    assert res.returncode == 0, res.stderr
    assert out.is_file() and "report:" in res.stdout
    res = run_cli("report", tmp_path)
    assert res.returncode == 2 and "not a kclassify run folder" in res.stderr and "Traceback" not in res.stderr


def test_calibration_bins():
    """ECE by hand: 10 images at confidence 0.9 of which 5 are right -> |0.5 - 0.9| = 0.4."""
    probs = np.full((10, 2), 0.1, np.float32)
    probs[:, 0] = 0.9
    labels = np.array([0] * 5 + [1] * 5)
    cal = calibration(probs, labels, bins=10)
    assert cal["ece"] == pytest.approx(0.4)
    filled = [b for b in cal["bins"] if b["count"]]
    assert len(filled) == 1 and filled[0]["lo"] == pytest.approx(0.9) and filled[0]["accuracy"] == 0.5
    right = np.eye(2, dtype=np.float32)[labels]
    assert calibration(right, labels)["ece"] == pytest.approx(0.0)


def test_thousand_classes(tmp_path):
    """1,000 classes: the lists are capped, the page says what it left out and still renders."""
    from kclassify.recipe import validate
    from kclassify.run import Run

    k, per_class = 1000, 4
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(k), per_class)
    images = rng.integers(0, 256, (k * per_class, 8, 8, 3), dtype=np.uint8)
    names = np.array([f"class_{i:04d}" for i in range(k)])
    np.savez(tmp_path / "big.npz", x=images, y=labels, class_names=names)
    run = tmp_path / "run"
    run.mkdir()
    recipe = validate({"name": "big", "data": {"source": "npz", "path": str(tmp_path / "big.npz"), "val_fraction": 0.5},
                       "output": {"dir": str(run)}})
    (run / "recipe.yaml").write_text(recipe.to_yaml())
    data = Run.load(run).data()
    probs = rng.dirichlet(np.full(k, 0.05), len(data.val)).astype(np.float32)
    top1 = float((probs.argmax(1) == data.val.labels).mean())
    (run / "metrics.json").write_text(json.dumps({"val": {"top1": top1, "top5": 0.01, "loss": 6.9}}))
    page = write_html_report(run, run / "report.html", data=data, probs=probs, echo=lambda *a: None).read_text()
    assert f"Showing the {CLASS_ROWS} weakest of {k} classes" in page
    assert f"the other {k - CLASS_ROWS} classes" in page
    assert page.count('<figure class="example">') <= WRONG_IMAGES + PAIRS * 4
    assert "names are not drawn above" in page and "The 10 smallest classes" in page
    assert len(page.encode()) < 3e6
    if browser.missing() is None:
        found = browser.open_page(run / "report.html", sections=SECTION_IDS)
        assert found["console"] == [] and found["errors"] == [] and found["requests"] == []
        assert all(found["visible"].values())


def test_curves_with_validation_every_few_epochs(tmp_path):
    """train.val_every: 2 leaves the validation columns of history.csv empty on the other epochs;
    the curves plot the epochs that have them and the report names the last measured one."""
    from types import SimpleNamespace

    from kclassify.plots import plot_history
    from kclassify.commands.report import curves_section

    rows = ["epoch,loss,top1,val_loss,val_top1", "0,2.0,0.3,,", "1,1.5,0.5,1.4,0.55", "2,1.2,0.6,,", "3,1.0,0.7,1.1,0.65"]
    (tmp_path / "history.csv").write_text("\n".join(rows) + "\n")
    plot_history(tmp_path / "history.csv", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    html = curves_section({"run": SimpleNamespace(file=lambda name: tmp_path / name)})
    assert "validation top-1 0.6500 after epoch 4, best 0.6500 after epoch 4" in html


def test_the_report_does_not_set_the_runtime_up_again(run_copy, tmp_path, monkeypatch):
    """The report runs at the end of a training command whose runtime is set up (seeds, devices, a
    multi-worker strategy on the chief): its augmentation grid uses that runtime, never a second
    runtime.setup (which re-seeded Keras and, under multi_worker, built a second strategy)."""
    from kclassify import runtime

    def refuse(*args, **kwargs):
        raise AssertionError("runtime.setup called again by the report")

    monkeypatch.setattr(runtime, "setup", refuse)
    out = write_html_report(run_copy, tmp_path / "r.html", echo=lambda *a: None)
    assert "augmentation preview" in out.read_text()
