"""The app in a real browser: headless Chromium, driven by selenium, against ``streamlit run``.

It uploads a synthetic crack photo, waits for the overlay and the crack table, moves the
threshold slider with the keyboard, checks that the table changes as predicted, and saves a
screenshot (``app.png`` under the test's folder; also to ``$FISSURE_APP_SCREENSHOT`` when
set). It needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package;
without them it skips, naming what is missing. The server and the browser are started and
stopped here, on a free port of 127.0.0.1, with bounded waits.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fissure.app import streamlit_command

CHROMIUM = ("chromium", "/usr/bin/chromium")
CHROMEDRIVER = ("chromedriver", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1500,1100",
)
SERVER_START_S = 90
PAGE_WAIT_S = 120


def _find(name: str, usual: str) -> str | None:
    found = shutil.which(name)
    return found or (usual if os.access(usual, os.X_OK) else None)


def _missing() -> list[str]:
    missing = []
    if _find(*CHROMIUM) is None:
        missing.append("chromium (apt-get install chromium)")
    if _find(*CHROMEDRIVER) is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium (pip install selenium)")
    return missing


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture()
def server(tmp_path: Path, dark_checkpoint: Path) -> Iterator[str]:
    """``fissure app``'s command, serving on a free port of 127.0.0.1; its URL."""
    if _missing():
        pytest.skip("the browser test needs " + ", ".join(_missing()))
    port = _free_port()
    command = streamlit_command(
        dark_checkpoint, None, port=port, address="127.0.0.1", headless=True
    )
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "streamlit did not start: " + (tmp_path / "server.log").read_text()[-2000:]
                    )
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(_find(*CHROMIUM))
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(_find(*CHROMEDRIVER))), options=options)
    driver.set_page_load_timeout(PAGE_WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _labelled(driver: Any, test_id: str, label: str) -> Any:
    """The element of ``data-testid`` ``test_id`` whose text starts with ``label``."""
    from selenium.webdriver.common.by import By

    hits = [
        e
        for e in driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{test_id}"]')
        if e.text.startswith(label)
    ]
    return hits[0] if hits else False


def _table(driver: Any) -> list[list[str]] | bool:
    """The crack table's rows as cell texts (its accessible copy), or False before it."""
    from selenium.webdriver.common.by import By

    grids = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"] table')
    if not grids:
        return False
    rows = grids[0].find_elements(By.CSS_SELECTOR, "tbody tr")
    return [
        [c.get_attribute("textContent") for c in r.find_elements(By.CSS_SELECTOR, "td")]
        for r in rows
    ]


def _cracks(driver: Any) -> int | None:
    metric = _labelled(driver, "stMetric", "Cracks")
    return int(metric.text.split()[-1]) if metric else None


def test_upload_tune_and_see_the_table_change(
    server: str, browser: Any, tmp_path: Path, photo_png: bytes
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "crack.png"
    photo.write_bytes(photo_png)
    # Every rerun redraws the page, so an element found a moment ago may be gone.
    wait = WebDriverWait(
        browser,
        PAGE_WAIT_S,
        poll_frequency=0.25,
        ignored_exceptions=(StaleElementReferenceException,),
    )
    browser.get(server)
    uploader = wait.until(lambda d: _labelled(d, "stFileUploader", "Photos"))
    uploader.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(photo))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img'))
    wait.until(lambda d: _cracks(d) == 1 and len(_table(d) or []) == 1)
    before = _table(browser)
    assert before[0][0] == "1"  # the 3-px horizontal crack alone at 0.5

    _slide_threshold_to(browser, 0.30)
    wait.until(lambda d: _cracks(d) == 2 and len(_table(d) or []) == 2)
    after = _table(browser)
    assert after != before and [row[0] for row in after] == ["1", "2"]

    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "app.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("FISSURE_APP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["FISSURE_APP_SCREENSHOT"])


def _slide_threshold_to(browser: Any, target: float, attempts: int = 5) -> None:
    """Move the Threshold slider to ``target`` with the arrow keys (0.01 a key).

    A rerun can redraw the slider while keys are on their way, and the focus goes with the
    old element: read where the thumb is, press what is missing, and look again.
    """
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    # The thumb is an ARIA slider or, in newer Streamlit, a visually hidden range input.
    selector = '[role="slider"], input[type="range"]'

    def value(driver: Any) -> float:
        thumb = _labelled(driver, "stSlider", "Threshold").find_element(By.CSS_SELECTOR, selector)
        return float(thumb.get_attribute("aria-valuenow") or thumb.get_attribute("value"))

    for _ in range(attempts):
        try:
            steps = round((value(browser) - target) / 0.01)
            if steps == 0:
                return
            thumb = _labelled(browser, "stSlider", "Threshold").find_element(
                By.CSS_SELECTOR, selector)
            browser.execute_script("arguments[0].focus()", thumb)
            keys = ActionChains(browser)
            for _ in range(abs(steps)):
                keys.send_keys(Keys.ARROW_LEFT if steps > 0 else Keys.ARROW_RIGHT)
            keys.perform()
            WebDriverWait(browser, 20, poll_frequency=0.25,
                          ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda d: abs(value(d) - target) < 0.005)
            return
        except (StaleElementReferenceException, TimeoutException):
            continue
    raise AssertionError(f"the Threshold slider did not reach {target}")


def test_the_skip_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert _missing() == [
        "chromium (apt-get install chromium)",
        "chromedriver (apt-get install chromium-driver)",
        "selenium (pip install selenium)",
    ]
