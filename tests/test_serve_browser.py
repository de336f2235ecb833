"""`wbc serve` in a real headless browser (Debian's chromium + chromedriver through Selenium).

Starts `wbc serve` in a subprocess on a free port, uploads a zip with a broken file through the
page's file input, and checks the table and the differential count against `predict_files` on
the same zip; then opens the Results page. Skips when chromium or chromedriver is missing, unless
WBC_REQUIRE_BROWSER=1 (set by .ci/run, which installs them): then it fails.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_serve import cells_zip, checkpoint, write_reports  # noqa: F401  (checkpoint is a fixture)
from wbc import LABELS
from wbc.apps.predict import differential_count
from wbc.apps.predict import predictions_csv
from wbc.apps.webapp.model import load_page_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
#: Without the background-networking flags Chromium stalls on a closed network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000")
WAIT = 120  # seconds: classification of a few images on a busy 2-core machine


def need_browser() -> None:
    """Skip (or fail with WBC_REQUIRE_BROWSER=1) when chromium or chromedriver is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if not missing:
        return
    message = f"{' and '.join(missing)} missing (apt-get install chromium chromium-driver)"
    if os.environ.get("WBC_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " and WBC_REQUIRE_BROWSER=1")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Poll /api/info until it answers; fail with the server's log when it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"wbc serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/info", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"wbc serve did not answer within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """`wbc serve` on a free port in a workspace with a small reports/ folder -> its base URL."""
    need_browser()
    workspace = tmp_path_factory.mktemp("workspace")
    write_reports(workspace)
    port = free_port()
    log = workspace / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wbc.apps.cli", "serve", "--model", str(checkpoint),
                                 "--port", str(port), "--device", "cpu"], cwd=workspace, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Headless chromium with a fresh profile; browser console messages kept for the checks."""
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver, condition, timeout: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def table_rows(driver) -> list[dict[str, str]]:
    """The predictions table as dicts of header -> cell text (thumbnail column as `thumb`)."""
    return driver.execute_script("""
        const table = document.getElementById('pred-table');
        const keys = [...table.tHead.rows[0].cells].map(th => th.dataset.key);
        return [...table.tBodies[0].rows].map(tr => Object.fromEntries(
            [...tr.cells].map((td, i) => [keys[i], td.innerText.trim()]).concat([['class', tr.className]])));
    """)


def severe_console_messages(driver) -> list[str]:
    """Errors in the browser console (failed requests, CSP violations, script errors)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_classify_page_upload(server: str, browser, checkpoint: Path, tmp_path: Path,  # noqa: F811
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.by import By

    zip_path = tmp_path / "cells.zip"
    zip_path.write_bytes(cells_zip(broken=True))
    browser.get(f"{server}/")
    wait_until(browser, lambda d: d.find_element(By.ID, "limits").text.strip() != "")
    assert "shufflenet_v2_x1_0" in browser.find_element(By.ID, "model-badge").text
    browser.find_element(By.ID, "file-input").send_keys(str(zip_path))
    wait_until(browser, lambda d: d.find_element(By.ID, "results").is_displayed()
               or d.find_element(By.ID, "message").is_displayed())
    assert not browser.find_element(By.ID, "message").is_displayed(), browser.find_element(By.ID, "message").text

    monkeypatch.chdir(tmp_path)  # predict the zip under the same name as uploaded
    frame = load_page_model(checkpoint).predict_files(["cells.zip"])  # = wbc.apps.predict.predict_files
    rows = table_rows(browser)
    assert [r["path"] for r in rows] == frame["path"].tolist()
    assert [r["label"] for r in rows] == frame["label"].tolist()
    assert [r["confidence"] for r in rows] == [f"{c:.3f}" if c == c else "–" for c in frame["confidence"]]
    broken = [r for r in rows if r["error"]]
    assert [r["path"] for r in broken] == ["cells.zip:slide/broken.jpg"] and "error" in broken[0]["class"]
    assert "cells.zip:slide/broken.jpg" in browser.find_element(By.ID, "problem-list").text

    diff = differential_count(frame["label"].tolist(), LABELS)
    shown = [tr.find_elements(By.TAG_NAME, "td") for tr in browser.find_elements(By.CSS_SELECTOR, "#diff-table tbody tr")]
    assert [(td[0].text, int(td[1].text)) for td in shown] == list(zip(diff["class"], diff["count"]))
    assert [td[2].text for td in shown] == [f"{p:.1f} %" for p in diff["percent"]]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#diff-chart svg rect.bar")) == len(LABELS)

    href = browser.find_element(By.ID, "download").get_attribute("href")
    with urllib.request.urlopen(href) as response:
        assert response.read().decode("utf-8") == predictions_csv(frame)
    wait_until(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#pred-table img.thumb')].every(i => i.complete && i.naturalWidth > 0)"), 30)
    check_sort_and_filters(browser, frame)
    assert severe_console_messages(browser) == []


def check_sort_and_filters(browser, frame) -> None:
    """Sorting by confidence, the class filter and the low-confidence filter, on the shown rows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    header = browser.find_element(By.CSS_SELECTOR, "#pred-table th[data-key='confidence']")
    header.click()
    values = [r["confidence"] for r in table_rows(browser)]
    numbers = [float(v) for v in values if v != "–"]
    assert numbers == sorted(numbers) and values[-1] == "–"  # unreadable rows last
    header.click()
    numbers = [float(r["confidence"]) for r in table_rows(browser) if r["confidence"] != "–"]
    assert numbers == sorted(numbers, reverse=True) and header.get_attribute("aria-sort") == "descending"

    label = frame.loc[frame["error"] == "", "label"].iloc[0]
    Select(browser.find_element(By.ID, "filter-class")).select_by_value(label)
    assert {r["label"] for r in table_rows(browser)} == {label}
    assert len(table_rows(browser)) == int((frame["label"] == label).sum())
    Select(browser.find_element(By.ID, "filter-class")).select_by_value("")
    threshold = browser.find_element(By.ID, "threshold")
    threshold.clear()
    threshold.send_keys("0.25")
    browser.find_element(By.ID, "filter-low").click()
    expected = frame.loc[(frame["error"] == "") & (frame["confidence"] < 0.25), "path"].tolist()
    assert [r["path"] for r in table_rows(browser)] == sorted(
        expected, key=lambda p: -float(frame.loc[frame["path"] == p, "confidence"].iloc[0]))


def test_results_page(server: str, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/results")
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results-table table"), 30)
    table = browser.find_element(By.CSS_SELECTOR, "#results-table table")
    assert "resnet18" in table.text and "98.6" in table.text
    groups = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#figures h3")]
    assert groups == ["reports/", "dedup", "evaluate/resnet18-42"]
    wait_until(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#figures img')].every(i => i.complete && i.naturalWidth > 0)"), 30)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#curves svg polyline")) == 3  # train/val acc, lr
    assert severe_console_messages(browser) == []
