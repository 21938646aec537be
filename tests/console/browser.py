"""Driving Debian's headless Chromium with Selenium for the console's browser tests.

Chromium is started with everything that would reach the network switched off
(this machine has no network but 127.0.0.1, and a background update or sync
check would hang the start) and a fresh profile per test, so nothing carries
over between tests. Selenium is given the paths of Debian's ``chromium`` and
``chromium-driver`` explicitly, so Selenium Manager never tries to download a
browser. ``scripts/test`` installs both packages when they are missing.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

DESKTOP = (1280, 800)
PHONE = (390, 844)

SCREENSHOTS_ENV = "HASHMESH_CONSOLE_SCREENSHOTS"
"""When set, screenshots are also written to this directory (docs/console/ keeps current ones)."""


def _require(path: str, package: str) -> str:
    found = shutil.which(path) or (path if os.path.exists(path) else None)
    if found is None:
        pytest.fail(
            f"{path} is missing: the browser tests need Debian's {package} "
            f"(apt-get install chromium chromium-driver; scripts/test installs it)"
        )
    return found


@contextmanager
def chromium(profile: Path, downloads: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile in ``profile``, saving downloads to ``downloads``."""
    options = Options()
    options.binary_location = _require(CHROMIUM, "chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-default-apps",
        "--password-store=basic",
        f"--user-data-dir={profile}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    service = Service(executable_path=_require(CHROMEDRIVER, "chromium-driver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        # The console must work without scripts: run every page with them off.
        driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, directory: Path, name: str, size: tuple[int, int]) -> Path:
    """Save the whole current page as seen in a ``size`` (width, height) window.

    The page is laid out at that width (as a phone, below 600 px: the viewport
    meta tag applies) and captured to its full height.
    """
    width, height = size
    mobile = width < 600
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    # From the layout, not a script: the pages run with scripts disabled.
    layout = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    full = max(height, min(int(layout["cssContentSize"]["height"]), 4000))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": full})
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path = directory / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    extra = os.environ.get(SCREENSHOTS_ENV)
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(extra) / path.name)
    return path
