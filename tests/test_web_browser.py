"""irib-web in a real browser: start ``irib-web --tiny``, upload the bundled photo in headless
Chromium, press Restore, and see the result, the LQ proxies and the prompts appear; then a file
that is not an image, and one over --max-upload-mb, get their messages in the page. A screenshot
is kept (in pytest's tmp_path, and in $IRIB_SCREENSHOT_DIR when set). Needs Debian's ``chromium``
and ``chromium-driver``; skipped without them. The server is stopped by its process id and its
temporary folder must be gone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusers_irib.utils.image_files import bundled_image_path

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
START_TIMEOUT = 180  # seconds: importing torch, diffusers and Gradio on a busy 2-core machine
RESULT_TIMEOUT = 180

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not os.path.exists(CHROMEDRIVER),
    reason="headless browser test: needs chromium and chromedriver (apt-get install chromium chromium-driver)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url: str, server: subprocess.Popen, log: Path) -> float:
    """Seconds until ``url`` answers; fails early if the server exits."""
    start = time.perf_counter()
    while time.perf_counter() - start < START_TIMEOUT:
        if server.poll() is not None:
            pytest.fail(f"irib-web exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"irib-web did not answer within {START_TIMEOUT} s:\n{log.read_text()}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM (irib-web then closes Gradio and removes its folder), SIGKILL after 30 s."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log = tmp_path / "irib-web.log"
    cwd = tmp_path / "cwd"  # the server must write nothing here (nor anywhere but its temporary folder)
    cwd.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    env.pop("GRADIO_TEMP_DIR", None)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "diffusers_irib.cli.web",
                "--tiny",
                "--port",
                str(port),
                "--max-side",
                "96",
                "--max-upload-mb",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        seconds = wait_for_page(url, process, log)
        yield url, seconds, log
    finally:
        stop(process)
    folder = re.search(r"temporary files in (\S+)", log.read_text())
    assert folder, log.read_text()
    assert not os.path.exists(folder.group(1)), "the temporary folder was not removed at exit"
    assert list(cwd.iterdir()) == []


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(argument)
    if CHROMIUM:
        options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_restore_in_the_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, start_seconds, log = server
    begin = time.perf_counter()
    browser.get(url)
    wait = WebDriverWait(browser, RESULT_TIMEOUT)
    wait.until(lambda d: d.find_elements(By.ID, "irib-restore"))
    assert "UNTRAINED" in browser.find_element(By.ID, "irib-banner").text

    browser.find_element(By.CSS_SELECTOR, "#irib-input input[type=file]").send_keys(str(bundled_image_path()))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#irib-input img"))
    browser.find_element(By.CSS_SELECTOR, "#irib-prompt textarea, #irib-prompt input").send_keys("an astronaut")
    browser.find_element(By.ID, "irib-restore").click()

    def prompts(d):
        return d.find_element(By.CSS_SELECTOR, "#irib-prompts textarea").get_attribute("value")

    wait.until(lambda d: prompts(d) or "Not restored" in d.find_element(By.ID, "irib-status").text)
    first_result = time.perf_counter() - begin
    status = browser.find_element(By.ID, "irib-status").text
    assert status.startswith("Restored 96x96 px"), status
    assert "restorer (from LQ proxy 3): an astronaut" in prompts(browser)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#irib-slider img")) == 2)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#irib-gallery img")) == 3)  # 1 + 2 LFO rounds
    assert "round 1: an astronaut" in browser.find_element(By.ID, "irib-gallery").text
    link = browser.find_element(By.CSS_SELECTOR, "#irib-download a[href]").get_attribute("href")
    assert link.endswith("astronaut_restored.png"), link
    with urllib.request.urlopen(link, timeout=10) as response:  # the download is the PNG
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"
    browser.execute_script("window.scrollTo(0, 0)")  # the banner in the picture too
    time.sleep(1)  # let the images finish drawing
    shot = tmp_path / "irib-web.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("IRIB_SCREENSHOT_DIR"):
        Path(os.environ["IRIB_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["IRIB_SCREENSHOT_DIR"]) / "irib-web.png")
    print(f"page answered {start_seconds:.1f} s after start; first result {first_result:.1f} s after opening it")

    # a text file named .png: a message in the page, the last results cleared
    text = tmp_path / "notes.png"
    text.write_text("these are notes, not a picture\n")
    browser.find_element(By.CSS_SELECTOR, "#irib-input button[aria-label='Remove Image']").click()
    browser.find_element(By.CSS_SELECTOR, "#irib-input input[type=file]").send_keys(str(text))
    browser.find_element(By.ID, "irib-restore").click()
    wait.until(lambda d: "Not restored" in d.find_element(By.ID, "irib-status").text)
    assert "is not an image this server can read" in browser.find_element(By.ID, "irib-status").text
    assert prompts(browser) == ""

    # a file over --max-upload-mb: Gradio refuses the upload itself, with a message in the page
    heavy = tmp_path / "heavy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)).save(heavy)
    browser.find_element(By.CSS_SELECTOR, "#irib-input button[aria-label='Remove Image']").click()
    browser.find_element(By.CSS_SELECTOR, "#irib-input input[type=file]").send_keys(str(heavy))

    def upload_refusal(d):  # Gradio's toast (it may close again before a second look)
        text = d.find_element(By.TAG_NAME, "body").text
        return next((line for line in text.splitlines() if "exceed the maximum allowed size" in line), None)

    assert '"heavy.png"' in wait.until(upload_refusal)
    assert "Traceback" not in log.read_text()
