"""Headless Chromium for browser tests: Debian's chromium + chromedriver, driven through selenium.

Why this shape: the machines reach Debian's packages but not the download hosts that browser
tools fetch their own builds from, so the browser comes from apt (`infra/install_chromium.sh`)
and the driver path is given explicitly, which keeps Selenium Manager from ever running. The
closed network also refuses Chromium's own background connections: those are switched off.
"""

from __future__ import annotations

import base64
import functools
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import PROJECT_ROOT

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_SCRIPT = PROJECT_ROOT / "infra" / "install_chromium.sh"

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
)


def _missing() -> list[Path]:
    return [path for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]


@functools.cache
def chromium_unavailable() -> str | None:
    """None when Chromium and chromedriver are there; else why not, after one install attempt.

    The install script runs at most once per test session (it calls apt-get); its own message,
    e.g. the apt error, is the reason handed back for the skip.
    """
    if not _missing():
        return None
    bash = shutil.which("bash")
    if bash is None:
        return f"{', '.join(map(str, _missing()))} missing and no bash to run {INSTALL_SCRIPT}"
    try:
        done = subprocess.run(
            [bash, str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900
        )
    except subprocess.TimeoutExpired:
        return f"{INSTALL_SCRIPT} did not finish in 15 minutes"
    still_missing = _missing()
    if done.returncode == 0 and not still_missing:
        return None
    output = (done.stdout + done.stderr).strip().splitlines()
    tail = "\n".join(output[-15:])
    return (
        f"no headless Chromium: {', '.join(map(str, still_missing))} missing after "
        f"{INSTALL_SCRIPT} (exit {done.returncode}):\n{tail}"
    )


def headless_chromium(profile_dir: Path, width: int = 1600, height: int = 1000) -> WebDriver:
    """A headless Chromium with a throw-away profile; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    size = f"--window-size={width},{height}"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", size):
        options.add_argument(flag)
    # An explicit driver path: selenium then skips Selenium Manager (no download attempt).
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver


# How tall the page would be if no element scrolled inside it: MLflow's pages are one viewport
# high and scroll inner panels, so the document size alone would miss what is below the fold.
_UNFOLDED_SIZE_JS = """
let extra = 0;
for (const el of document.querySelectorAll('*')) {
  const overflow = getComputedStyle(el).overflowY;
  if ((overflow === 'auto' || overflow === 'scroll') && el.scrollHeight > el.clientHeight) {
    extra = Math.max(extra, el.scrollHeight - el.clientHeight);
  }
}
const root = document.documentElement;
return [root.clientWidth, Math.max(root.scrollHeight, window.innerHeight) + extra];
"""
MAX_SCREENSHOT_HEIGHT = 8000


def save_full_page(driver: WebDriver, path: Path) -> Path:
    """A PNG of the whole page, inner scroll panels unfolded, through Chrome DevTools.

    The viewport is made as tall as the content for the capture and restored after, so the
    page is laid out (not stitched) at that size.
    """
    width, height = driver.execute_script(_UNFOLDED_SIZE_JS)
    height = min(int(height), MAX_SCREENSHOT_HEIGHT)
    metrics = {"width": int(width), "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        time.sleep(0.5)  # let the app re-lay out (virtualised tables render the new rows)
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
