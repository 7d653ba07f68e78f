"""app.py in a real headless browser: upload an image through the page, compare the shown mask with the pipeline's.

Needs gradio and selenium (requirements-app.txt) and Debian's chromium + chromium-driver; .ci/run installs them.
"""

import base64
import io
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from launcher import REPO_ROOT, free_port, launch_env, tiny_overlay
from PIL import Image

from dataset.trans10k import load_image
from evaluation.image_writer import raw_to_png_array
from models.pipeline import TransparencySegmentationPipeline
from models.segmenter import load_predictor
from utils.config import parse_config

pytestmark = pytest.mark.slow
pytest.importorskip("gradio", reason="app requirements not installed: `make test-app` runs this in .venv-app")
pytest.importorskip("selenium", reason="app requirements not installed: `make test-app` runs this in .venv-app")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def pipeline_folder(tiny_assets, tmp_path_factory) -> Path:
    overlay = tiny_overlay(tiny_assets, tmp_path_factory.mktemp("run"))
    args, _ = parse_config([f"--{key}={value}" for key, value in overlay.items()])
    predictor = load_predictor(args, str(tiny_assets["model"] / "transformer"), torch.device("cpu"), torch.float32)
    folder = tmp_path_factory.mktemp("pipeline") / "model"
    TransparencySegmentationPipeline.from_predictor(predictor, 8, 64).save_pretrained(folder)
    return folder


@pytest.fixture
def server(pipeline_folder, tiny_assets):
    port = free_port()
    examples = tiny_assets["data"] / "test" / "easy" / "images"
    command = [sys.executable, str(REPO_ROOT / "app.py"), "--model", str(pipeline_folder), "--port", str(port)]
    process = subprocess.Popen([*command, "--examples", str(examples)], cwd=REPO_ROOT, env=launch_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"app.py did not serve {url}:\n{process.communicate()[0][-3000:]}") from None
            time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=30)


def browser():
    from selenium import webdriver

    if CHROMEDRIVER is None:
        pytest.skip("chromedriver not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


def fetch_png(src: str) -> np.ndarray:
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        data = urllib.request.urlopen(src, timeout=30).read()
    return np.asarray(Image.open(io.BytesIO(data)))


def test_upload_in_the_browser_shows_the_pipelines_mask(server, pipeline_folder, tiny_assets):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    image_path = sorted((tiny_assets["data"] / "test" / "hard" / "images").iterdir())[0]
    driver = browser()
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 120)
        upload = wait.until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#uploads input[type=file]"))
        )
        upload.send_keys(str(image_path))
        wait.until(
            expected_conditions.text_to_be_present_in_element((By.ID, "uploads"), image_path.stem)
        )  # name and suffix split
        driver.find_element(By.ID, "segment").click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "status"), "1 image(s) segmented"))
        mask_src = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#mask img")))
        raw_src = driver.find_element(By.CSS_SELECTOR, "#raw img")
        shown_mask, shown_raw = fetch_png(mask_src.get_attribute("src")), fetch_png(raw_src.get_attribute("src"))
    finally:
        driver.quit()
    pipe = TransparencySegmentationPipeline.from_pretrained(pipeline_folder)
    out = pipe(np.asarray(load_image(image_path)))
    assert np.array_equal(shown_mask, out.mask[0].astype(np.uint8) * 255)
    assert np.array_equal(shown_raw, raw_to_png_array(torch.from_numpy(out.raw[0])))
