"""The web page at / end to end in headless Chromium (Debian's chromium + chromedriver through
selenium): type a prompt, watch the masked canvas fill in step by step, and get the text the API
gives for the same seed - in continuation and in infilling mode.

Skipped, saying why, where chromium, chromedriver or selenium is missing (.ci/run installs them).
DIFFLM_SCREENSHOT=docs/serve_page.png keeps the mid-run screenshot there (the one in the docs).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from serve_fixtures import MODEL, client, dlm, running_server  # noqa: F401 (fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                ".ci/run does it)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="difflm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def base(dlm):
    with running_server(dlm) as url:
        yield url


def fill_in(driver, element_id: str, value: str) -> None:
    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(value)


def cells(driver) -> tuple[int, int]:
    """(masked cells, filled cells) of the canvas now."""
    masked = len(driver.find_elements(By.CSS_SELECTOR, "#cells .cell.masked"))
    filled = len(driver.find_elements(By.CSS_SELECTOR, "#cells .cell.new, #cells .cell.done"))
    return masked, filled


def generate_on_the_page(driver, base: str, settings: dict[str, str], screenshot: Path | None = None) -> dict:
    driver.get(base + "/")
    WebDriverWait(driver, 30).until(lambda d: MODEL in d.find_element(By.ID, "model").text)
    if "suffix" in settings:
        driver.find_element(By.ID, "mode-infill").click()
    for element_id, value in settings.items():
        fill_in(driver, element_id, value)
    driver.find_element(By.ID, "generate").click()
    partial, shot = None, False
    deadline = time.time() + 120
    while driver.find_element(By.ID, "status").get_attribute("data-state") not in ("done", "error"):
        assert time.time() < deadline, "the page did not finish"
        masked, filled = cells(driver)
        if masked and filled:  # caught mid-way: some cells filled, some masked
            partial = partial or (masked, filled)
            if screenshot is not None and not shot and filled >= masked:  # about half way: the telling picture
                driver.save_screenshot(str(screenshot))
                shot = True
        time.sleep(0.02)
    if screenshot is not None and not shot:
        driver.save_screenshot(str(screenshot))
    canvas = driver.find_element(By.ID, "canvas")
    return {"status": driver.find_element(By.ID, "status").text, "partial": partial,
            "frames": int(canvas.get_attribute("data-frames")), "final": cells(driver),
            "text": driver.find_element(By.ID, "final-text").get_attribute("textContent"),
            "error": driver.find_element(By.ID, "error").get_attribute("textContent"),
            "calls": driver.find_element(By.ID, "stat-calls").text}


def test_the_canvas_fills_in_and_ends_with_the_apis_text(browser, base, tmp_path):
    shot = Path(os.environ.get("DIFFLM_SCREENSHOT") or tmp_path / "page.png")
    page = generate_on_the_page(browser, base, {"prompt": "And God said", "max-tokens": "32", "seed": "5",
                                                "temperature": "0.8", "block-length": "16", "delay": "25"}, shot)
    assert page["status"].startswith("done") and not page["error"], page
    assert page["partial"] is not None  # the canvas was seen part masked, part filled
    assert page["frames"] == int(page["calls"]) >= 2 and page["final"] == (0, 32)
    answer = client(base).completions.create(model=MODEL, prompt="And God said", max_tokens=32, seed=5,
                                             temperature=0.8, top_p=1, extra_body={"block_length": 16,
                                                                                  "strategy": "low_confidence"})
    assert page["text"] == answer.choices[0].text
    assert shot.stat().st_size > 10_000


def test_infill_mode(browser, base):
    page = generate_on_the_page(browser, base, {"prompt": "And God said, Let there be", "suffix": "and there was light.",
                                                "max-tokens": "6", "seed": "2", "temperature": "0", "delay": "0"})
    assert page["status"].startswith("done") and page["final"] == (0, 6)
    answer = client(base).completions.create(model=MODEL, prompt="And God said, Let there be", max_tokens=6,
                                             suffix="and there was light.", seed=2, temperature=0)
    assert page["text"] == answer.choices[0].text


def test_an_error_is_shown(browser, base):
    page = generate_on_the_page(browser, base, {"prompt": "ROMEO:", "max-tokens": "8", "steps": "1",
                                                "block-length": "2"})
    assert page["status"] == "error" and "steps (1) must be at least the number of blocks" in page["error"]
