"""End to end in a real browser: headless Chromium (the system package) driven by Selenium through the system
chromedriver. A reader opens their link, answers images with the keyboard only, reloads, closes the browser,
comes back with the link, resumes where they stopped, and every answer is in the database.

Needs `apt-get install chromium chromium-driver` and `pip install selenium` (the test extra); skipped, with the
reason, when they are missing. SYNTHMED_STUDY_SCREENSHOTS=DIR keeps the screenshots it takes."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn", reason="the reader study needs the 'study' extra: pip install -e '.[study]'")
pytest.importorskip("selenium", reason="the browser test needs selenium: pip install -e '.[test]'")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from studydata import free_port, new_study, start_server, stop  # noqa: E402
from synthmed.study import db  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="no system Chromium/chromedriver (apt-get install chromium chromium-driver)")
CRITERIA = {"all": ["sharp membrane", "no artefact"]}


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,800",
                "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)


def shoot(driver, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("SYNTHMED_STUDY_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))


def current(driver) -> tuple[str, str]:
    """(progress text, image id) of the page shown."""
    count = driver.find_element(By.ID, "count").text
    return count, driver.find_element(By.NAME, "image").get_attribute("value")


def answer_with_keys(driver, *keys: str) -> None:
    before = current(driver)[0]
    body = driver.find_element(By.TAG_NAME, "body")
    for k in keys:
        body.send_keys(k)
    # the page is replaced while we look: an element of the old page going stale just means "not yet"
    WebDriverWait(driver, 30, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: d.find_elements(By.ID, "done") or current(d)[0] != before)


def test_a_reader_answers_by_keyboard_reloads_and_resumes_in_chromium(tmp_path):
    made = new_study(tmp_path, readers=("r1",), mode="both", criteria=CRITERIA)
    port = free_port()
    link = made.links["r1"].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    server = start_server(made.folder, port)
    try:
        driver = browser()
        try:
            driver.get(link)
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "count"))
            assert driver.current_url.endswith("/task")  # the token left the address bar
            img = driver.find_element(By.ID, "study-image")
            WebDriverWait(driver, 30).until(lambda d: d.execute_script("return arguments[0].complete", img))
            natural, shown = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].clientWidth]", img)
            assert natural == 16 and shown == 512  # a 16 px image shown 32x, nearest neighbour:
            assert driver.execute_script("return getComputedStyle(arguments[0]).imageRendering", img) == "pixelated"
            # and the screen shows it so: every 32 x 32 block of the rendered image is one flat grey (not smoothed)
            shot = np.asarray(Image.open(io.BytesIO(img.screenshot_as_png)).convert("L"))[:512, :512]
            blocks = shot.reshape(16, 32, 16, 32)[:, 1:-1, :, 1:-1]
            assert shot.shape == (512, 512) and (blocks.max(axis=(1, 3)) - blocks.min(axis=(1, 3))).max() <= 1
            assert "sharp membrane" in driver.page_source and current(driver)[0] == "image 1 of 8"
            shoot(driver, "1-first-image", tmp_path)

            # Enter before choosing anything: the browser's form validation keeps the answer from being sent
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)
            time.sleep(0.5)
            assert current(driver)[0] == "image 1 of 8"

            answered = []
            for keys in (("s", "4", "a", "b"), ("r", "2", "a"), ("s", "5")):
                answered.append(current(driver)[1])
                answer_with_keys(driver, *keys, Keys.ENTER)
            assert current(driver)[0] == "image 4 of 8"
            shoot(driver, "2-after-three-answers", tmp_path)
            fourth = current(driver)[1]
            driver.refresh()
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "count"))
            assert current(driver) == ("image 4 of 8", fourth)  # a reload shows the same image, answers nothing
            assert driver.execute_script("return document.getElementById('progress').value") == 3
        finally:
            driver.quit()
        # a new browser, the same link: resumes at image 4
        driver = browser()
        try:
            driver.get(link)
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "count"))
            assert current(driver) == ("image 4 of 8", fourth)
            for _ in range(5):
                answered.append(current(driver)[1])
                answer_with_keys(driver, "r", "3", Keys.ENTER)
            assert "All 8 images are answered" in driver.find_element(By.ID, "done").text
            shoot(driver, "3-done", tmp_path)
        finally:
            driver.quit()
    finally:
        stop(server)  # also when the test fails: no server left behind
    with db.connect(made.folder) as con:
        rows = con.execute("SELECT t.image_id, a.says_synthetic, a.confidence, a.plausible, a.criteria_met, a.client_ms "
                           "FROM answers a JOIN tasks t ON t.id = a.task_id ORDER BY t.position").fetchall()
    assert [r["image_id"] for r in rows] == answered
    assert [(r["says_synthetic"], r["confidence"], r["plausible"], json.loads(r["criteria_met"])) for r in rows[:3]] == [
        (1, 4, 1, [0, 1]), (0, 2, 0, [0]), (1, 5, 0, [])]
    assert all(r["client_ms"] is not None and r["client_ms"] > 0 for r in rows)
