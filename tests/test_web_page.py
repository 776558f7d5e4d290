"""The service's web page, in Debian's headless chromium driven by selenium through
chromium-driver: pick an image, wait for the result, and the facts, the before/after slider,
the zoom on the worst region and the download link are there; no console errors; a screenshot
(written to docs/ with IMGTUNE_SCREENSHOT=1)."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image

from . import _serve
from ._tools import need_tool

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "page-token"


@pytest.fixture(scope="module")
def service():
    proc, base = _serve.start(env={"IMGTUNE_TOKEN": TOKEN})
    try:
        yield base
    finally:
        _serve.stop(proc)


@pytest.fixture
def browser():
    chromium, driver = need_tool("chromium").path, need_tool("chromedriver").path
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1400"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(driver))
    yield d
    d.quit()


def test_the_page_needs_nothing_from_outside(service):
    html = httpx.get(service + "/").text
    assert '<input type="file"' in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no external asset


def test_upload_an_image_and_see_the_result(service, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    im = Image.open(ROOT / "sample_images" / "coffee.png").convert("RGB")
    im.thumbnail((320, 320))
    upload = tmp_path / "coffee.png"
    im.save(upload)
    browser.get(service + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "pick").send_keys(str(upload))
    wait = WebDriverWait(browser, 90)
    link = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".result a.download")))
    card = browser.find_element(By.CSS_SELECTOR, ".result")
    assert card.find_elements(By.CSS_SELECTOR, ".error") == []
    assert link.get_attribute("download").startswith("coffee.")
    assert link.get_attribute("href").startswith("blob:")
    saved = card.find_element(By.CSS_SELECTOR, ".saved").text
    assert re.match(r"[\d,]+ \(\d+\.\d%\)", saved), saved
    assert "ssimulacra2" in card.find_element(By.CSS_SELECTOR, ".scores").text
    # the slider at 1:1 (the output's own size), and it moves the cut
    slider = card.find_element(By.CSS_SELECTOR, ".slider")
    images = slider.find_elements(By.TAG_NAME, "img")
    assert images[0].size == {"width": im.width, "height": im.height}  # shown 1:1
    assert all(browser.execute_script("return arguments[0].naturalWidth", i) == im.width
               for i in images)  # fmt: skip
    rng = slider.find_element(By.CSS_SELECTOR, "input[type=range]")
    browser.execute_script(
        "arguments[0].value = 80; arguments[0].dispatchEvent(new Event('input'))", rng
    )
    before = slider.find_element(By.CSS_SELECTOR, ".before")
    assert before.get_attribute("style").strip().endswith("width: 80%;")
    # the zoom: two canvases drawn (not blank)
    canvases = card.find_elements(By.CSS_SELECTOR, ".zoom canvas")
    assert len(canvases) == 2
    for c in canvases:
        data = browser.execute_script("return arguments[0].toDataURL('image/png')", c)
        px = Image.open(__import__("io").BytesIO(base64.b64decode(data.split(",", 1)[1])))
        assert px.convert("L").getextrema()[1] > 0
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    if os.environ.get("IMGTUNE_SCREENSHOT"):
        browser.save_screenshot(str(ROOT / "docs" / "serve-page.png"))
