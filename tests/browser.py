"""Headless Chromium for the tests: open a local HTML file, wait for a condition, read it, take pictures.

The system Chromium (Debian's ``chromium`` package, installed by ``.ci/run``; ``BRAINAE_CHROMIUM`` names
another binary) is driven by Playwright; Playwright's own browser download is never used. WebGL runs on
Chromium's software renderer (SwiftShader), so the 3-D viewer works without a GPU. A test that needs the
browser skips, saying why, only when no Chromium is installed.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The Chromium binary to use, or None when none is installed."""
    env = os.environ.get("BRAINAE_CHROMIUM")
    if env:
        return env
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium binary; skips the calling test when none is installed (call it before costly set-up).

    With ``BRAINAE_REQUIRE_BROWSER=1`` (set by ``.ci/run`` once Chromium is installed) a missing Chromium fails
    the test instead, so that CI cannot pass these checks by skipping them.
    """
    exe = chromium_path()
    if exe is None:
        why = "no Chromium installed (apt-get install chromium); needed to open pages in a real browser"
        if os.environ.get("BRAINAE_REQUIRE_BROWSER") == "1":
            pytest.fail(why + " (BRAINAE_REQUIRE_BROWSER=1)")
        pytest.skip(why)
    return exe


class Page:
    """A loaded page: ``evaluate`` JavaScript, pictures as arrays, set a range input."""

    def __init__(self, page, errors: list[str]) -> None:
        self.page = page
        self.errors = errors

    def evaluate(self, expression: str):
        return self.page.evaluate(expression)

    def settle(self) -> None:
        """Wait for two animation frames (the viewer redraws on the next one)."""
        self.page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        self.page.wait_for_timeout(200)

    def screenshot_array(self, selector: str | None = None) -> np.ndarray:
        """An RGBA picture of the element (the whole viewport without a selector) as a uint8 array."""
        from PIL import Image

        self.settle()
        png = self.page.locator(selector).screenshot() if selector else self.page.screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))

    def set_range(self, selector: str, value: float) -> None:
        """Set the first matching range input to ``value`` and fire its ``input`` event, as a drag does."""
        self.page.evaluate(
            "([sel, v]) => { const el = document.querySelector(sel); el.value = String(v);"
            " el.dispatchEvent(new Event('input', {bubbles: true})); }",
            [selector, value],
        )
        self.settle()


@contextmanager
def open_page(
    path: str | os.PathLike, *, wait_for: str | None = None, timeout_ms: int = 90_000, size=(1200, 800)
) -> Iterator[Page]:
    """Open ``path`` in headless Chromium and wait until the JavaScript ``wait_for`` is true.

    Skips the test when no Chromium is installed. A JavaScript error on the page fails the test.
    """
    exe = require_chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=exe, args=["--disable-gpu-sandbox", "--no-first-run", "--disable-extensions"]
        )
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(Path(path).resolve().as_uri(), wait_until="load", timeout=timeout_ms)
            if wait_for:
                page.wait_for_function(wait_for, timeout=timeout_ms)
            yield Page(page, errors)
            assert not errors, f"JavaScript errors on {path}: {errors}"
        finally:
            browser.close()
