"""Screenshots of a run's report.html as a headless Chromium renders it (JavaScript off), one
PNG per section (palette PNG, to keep them small), and a JSON line of what the browser saw.

    python benchmarks/report_screenshots.py RUN --name clothing --out docs/report

RUN must hold report.html (`kclassify report RUN` writes it). Needs playwright and chromium
(see tests/browser.py)."""
import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import browser  # noqa: E402
from kclassify.commands.report import SECTIONS  # noqa: E402


def shrink(src, dest, colours=256):
    """Re-encode a screenshot with an adaptive palette (text and flat charts lose nothing)."""
    from PIL import Image

    Image.open(src).convert("RGB").quantize(colours, method=Image.Quantize.FASTOCTREE).save(dest, optimize=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--name", required=True, help="file name prefix, e.g. clothing")
    ap.add_argument("--out", default=str(ROOT / "docs" / "report"))
    ap.add_argument("--width", type=int, default=1100)
    args = ap.parse_args()
    why = browser.missing()
    if why:
        sys.exit(f"cannot take screenshots: {why}")
    page = Path(args.run) / "report.html"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        clips = {sid: Path(tmp) / f"{sid}.png" for sid, _ in SECTIONS}
        found = browser.open_page(page, sections=list(clips), clips=clips, width=args.width)
        files = {}
        for sid, raw in clips.items():
            dest = out / f"{args.name}_{sid}.png"
            shrink(raw, dest)
            files[sid] = {"file": str(dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest),
                          "bytes": dest.stat().st_size}
    print(json.dumps({"report": str(page), "report_bytes": page.stat().st_size, "console": found["console"],
                      "page_errors": found["errors"], "requests": found["requests"], "sections": found["ids"],
                      "all_visible": all(found["visible"].values()), "broken_images": found["broken_images"],
                      "metrics": {k: v[0] for k, v in found["metrics"].items()}, "ece": found["ece"],
                      "page_height_px": found["height"], "screenshots": files}, indent=1))


if __name__ == "__main__":
    main()
