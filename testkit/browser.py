"""Headless Chromium (Debian's chromium and chromium-driver) driven by Selenium, for the console's
end-to-end test. Chromium runs with no network but loopback: the flags keep it from reaching for
Google's services (refused here, and noisy), and every run gets a fresh, empty profile."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from testkit.tools import require_tool

ARTIFACTS = Path(os.environ.get("SES_RELAY_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))

FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--window-size=1280,1000",
)


@contextlib.contextmanager
def chromium(profile_dir: Path) -> Iterator:
    """A Selenium WebDriver on headless Chromium; quit on exit."""
    binary = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    # A given driver path: Selenium does not start selenium-manager (which would try to download one).
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path
