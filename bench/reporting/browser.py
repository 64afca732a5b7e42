"""Open report.html in a real headless Chromium (Debian's `chromium`, driven by Playwright; nothing downloaded)
and measure what a reader would meet: horizontal page scroll, a clipped headline table, broken images,
console errors.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.records import atomic_write_bytes

VIEWPORT = {"width": 1366, "height": 900}  # a laptop screen
CHROMIUM_NAMES = ("chromium", "chromium-browser")

MEASURE = """() => {
  document.querySelectorAll('details').forEach(d => d.open = true);
  const page = document.documentElement;
  const head = document.getElementById('headline');
  const box = head ? head.parentElement : null;
  const rect = head ? head.getBoundingClientRect() : null;
  const boxes = [...document.querySelectorAll('.scroll')];
  return {
    page_scroll_width: page.scrollWidth, viewport_width: window.innerWidth,
    headline_right: rect ? rect.right : null, headline_clipped: box ? box.scrollWidth > box.clientWidth : null,
    images: document.images.length,
    broken_images: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    scrolling_boxes: boxes.filter(b => b.scrollWidth > b.clientWidth).length,
    sections: [...document.querySelectorAll('h2')].map(h => h.textContent),
  };
}"""


class BrowserMissing(RuntimeError):
    """No Chromium executable or no Playwright: `apt-get install chromium` and the dev extras."""


@dataclass
class PageCheck:
    """What the browser measured on one page."""

    page_scroll_width: int
    viewport_width: int
    headline_right: float | None
    headline_clipped: bool | None
    images: int
    broken_images: list[str]
    scrolling_boxes: int
    sections: list[str]
    console_errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every rule the page breaks, one line each; [] when it reads well at this width."""
        out = []
        if self.page_scroll_width > self.viewport_width:
            out.append(f"the page scrolls horizontally: {self.page_scroll_width} px > {self.viewport_width} px")
        if self.headline_right is None:
            out.append("no headline table (id='headline')")
        elif self.headline_right > self.viewport_width or self.headline_clipped:
            out.append(f"the headline table is cut off: right edge {self.headline_right:.0f} px")
        out += [f"image does not load: {src}" for src in self.broken_images]
        out += [f"console error: {msg}" for msg in self.console_errors]
        return out


def find_chromium() -> str | None:
    """$CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("CHROMIUM")
    return explicit or next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def check_page(page_file: Path, screenshot: Path | None = None, viewport: dict | None = None) -> PageCheck:
    """Load `page_file` (file://, no server) at `viewport`, measure it, optionally save a PNG of the first screen."""
    executable = find_chromium()
    if executable is None:
        raise BrowserMissing("no chromium on PATH: `apt-get install -y chromium` (or set CHROMIUM=/path/to/it).")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise BrowserMissing(f"playwright is not installed ({exc}): pip install -e '.[dev]'.") from exc
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=viewport or VIEWPORT)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            if screenshot is not None:
                atomic_write_bytes(screenshot, page.screenshot())  # never half a PNG under its name
            measured = page.evaluate(MEASURE)
        finally:
            browser.close()
    return PageCheck(**measured, console_errors=errors)
