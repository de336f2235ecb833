"""Screenshots of the `wbc serve` pages: docs/screenshots/classify.png and results.png.

From the project root, with Debian's chromium and chromium-driver installed:

    python docs/screenshots/make_screenshots.py [--model MODEL_FILE] [--images cells.zip]

Starts `wbc serve` on a free port in the current workspace (its reports/ feed the Results page),
uploads the images (default: a zip of synthetic cells drawn by `wbc.data.synthetic` in a typical
differential's proportions, plus one broken file) through the page's file input, and saves
full-page PNGs (at most --max-height px tall).
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from wbc.data import synthetic

HERE = Path(__file__).resolve().parent
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1280,900")
#: Cells per class of the demo zip (roughly a normal blood differential).
DEMO_COUNTS = {"neutrophil": 14, "lymphocyte": 7, "monocyte": 3, "eosinophil": 2, "basophil": 1}


def demo_zip(path: Path) -> Path:
    """Synthetic Raabin-style crops (sorted by name: classes interleaved) and one truncated JPEG."""
    rng = np.random.default_rng(14)
    cam = synthetic.RAABIN_CAMERA
    with zipfile.ZipFile(path, "w") as zf:
        index = 0
        for label, count in DEMO_COUNTS.items():
            for _ in range(count):
                index += 1
                variant = "segmented" if label == "neutrophil" else ""
                scene = synthetic.Scene(synthetic.DEFAULT_SEED, "synth_raabin_testa", 7000 + index, label, variant,
                                        int(rng.integers(4)))
                image = synthetic.take_view(synthetic.render_field(scene, cam), cam, synthetic.View(), rng)
                zf.writestr(f"slide-07/cell_{int(rng.integers(10**5)):05d}.jpg", synthetic.encode(image, quality=88))
        zf.writestr("slide-07/cell_99999.jpg", synthetic.encode(image)[:2000])
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path | None, workspace: Path) -> tuple[subprocess.Popen, str]:
    """`wbc serve` in `workspace` on a free port; returns (process, base URL) once it answers."""
    port = free_port()
    model_args = ["--model", str(model.resolve())] if model else []
    proc = subprocess.Popen([sys.executable, "-m", "wbc.apps.cli", "serve", *model_args, "--port", str(port)],
                            cwd=workspace)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"wbc serve exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{url}/api/info", timeout=5).close()
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit("wbc serve did not start")


def browser(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def images_loaded(driver: webdriver.Chrome, selector: str) -> bool:
    """Every image of `selector` in sight (lazy images scrolled out of their box do not load) has loaded."""
    return driver.execute_script("""
        return [...document.querySelectorAll(arguments[0])].every(img => {
            const r = img.getBoundingClientRect();
            const box = (img.closest('.scroll') || document.documentElement).getBoundingClientRect();
            const seen = r.bottom > box.top && r.top < Math.min(box.bottom, window.innerHeight);
            return !seen || (img.complete && img.naturalWidth > 0);
        });""", selector)


def full_page(driver: webdriver.Chrome, out: Path, max_height: int, images: str) -> None:
    """Resize the window to the page's height (capped), wait for the `images` selector's images, save a PNG."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 20, max_height))
    driver.execute_script("window.scrollTo(0, 0)")
    WebDriverWait(driver, 60).until(lambda d: images_loaded(d, images))
    time.sleep(0.5)
    driver.save_screenshot(str(out))
    print(f"wrote {out}")


def shoot(url: str, images: Path, out: Path, max_height: int) -> None:
    """Upload `images` on the Classify page, then open the Results page; a screenshot of each."""
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(Path(profile))
        try:
            driver.get(f"{url}/")
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "limits").text.strip())
            driver.find_element(By.ID, "file-input").send_keys(str(images.resolve()))
            WebDriverWait(driver, 300).until(lambda d: d.find_element(By.ID, "results").is_displayed())
            driver.find_element(By.CSS_SELECTOR, "#pred-table th[data-key='confidence']").click()  # least sure first
            full_page(driver, out / "classify.png", max_height, "#pred-table img.thumb")
            driver.set_window_size(1280, 900)
            driver.get(f"{url}/results")
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "toc").text.strip())
            full_page(driver, out / "results.png", max_height, "#figures img")
        finally:
            driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model file (default: the workspace's headline model)")
    parser.add_argument("--images", type=Path, help="zip or image to upload (default: synthetic demo zip)")
    parser.add_argument("--workspace", type=Path, default=Path("."), help="where reports/ is (default: .)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--max-height", type=int, default=3200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = args.images or demo_zip(Path(tmp) / "slide-07.zip")
        proc, url = start_server(args.model, args.workspace)
        try:
            shoot(url, images, args.out, args.max_height)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
