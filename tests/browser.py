"""Open an HTML file in a real headless Chromium (the distribution's /usr/bin/chromium driven by
Playwright), offline, with JavaScript off as a reader without it would see the page: what
rendered, what the console said, which requests tried to leave the file, and a screenshot.
Used by tests/test_report.py and benchmarks/report_screenshots.py."""
import shutil
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def chromium_path():
    """The system Chromium, or None."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing():
    """Why a browser check cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "no chromium on PATH (Debian: apt-get install -y chromium; .ci/run installs it)"
    return None


def open_page(html_file, screenshot=None, width=1200, sections=None, clips=None, javascript=False):
    """Render `html_file`; returns {console, errors, requests, title, ids, visible, metrics, ece,
    broken_images, images, height}.
    `screenshot`: a PNG of the full page; `clips`: {section id: PNG path} screenshots of sections."""
    from playwright.sync_api import sync_playwright

    found = {"console": [], "errors": [], "requests": []}
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
            java_script_enabled=javascript, viewport={"width": width, "height": 900}, offline=True)
        try:
            page = context.new_page()
            page.on("console", lambda m: found["console"].append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: found["errors"].append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else found["requests"].append(r.url))
            page.goto(Path(html_file).resolve().as_uri(), wait_until="load")
            found["title"] = page.title()
            found["ids"] = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
            found["visible"] = {sid: page.locator(f"section#{sid}").is_visible() for sid in (sections or [])}
            found["metrics"] = {s.get_attribute("data-metric"): (s.get_attribute("data-value"), s.inner_text())
                                for s in page.query_selector_all("span.metric")}
            ece = page.query_selector("b.ece")
            found["ece"] = ece.get_attribute("data-value") if ece else None
            # an <img> that failed to decode has naturalWidth 0 (Playwright evaluates even with JS off)
            found["broken_images"] = page.eval_on_selector_all(
                "img", "els => els.filter(e => !e.complete || e.naturalWidth === 0).map(e => e.alt)")
            found["images"] = page.eval_on_selector_all("img", "els => els.length")
            found["height"] = page.evaluate("document.body.scrollHeight")
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
            for sid, path in (clips or {}).items():
                page.locator(f"section#{sid}").screenshot(path=str(path))
        finally:
            context.close()
    return found
