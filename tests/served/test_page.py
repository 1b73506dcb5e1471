"""The web page at ``/`` in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
installed by ``bin/setup --dev``), against the served graph: upload, follow the job, read the
result, rename a speaker, download, seek, and a refused file. Every request the page makes is
recorded (Chrome's performance log) and must go to the service's own origin.

Screenshots (desktop 1280x800, phone 390x844) go to ``$WXS_SCREENSHOT_DIR``, or to the test's
``tmp_path``; the folder is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.data import JFK_FLAC, PYANNOTE_SAMPLE
from tests.served.conftest import Served, start_server

pytestmark = pytest.mark.served
logger = logging.getLogger(__name__)

JOB_DEADLINE_S = 900.0
UI_DEADLINE_S = 30.0
DESKTOP = (1280, 800)
PHONE = (390, 844)
T = TypeVar("T")


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"none of {names} found: install Debian's chromium and chromium-driver (bin/setup --dev)")


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("WXS_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    logger.warning("page screenshots in %s", folder)
    return folder


@pytest.fixture
def browser(served: Served, downloads: Path) -> Iterator[WebDriver]:
    with _chromium(served.url, downloads) as driver:
        yield driver


@contextlib.contextmanager
def _chromium(url: str, downloads: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    # The performance log carries the DevTools Network events: every request the page makes.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_binary("chromedriver")))
    try:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.get(url + "/")
        yield driver
    finally:
        driver.quit()


def _until(what: str, check: Callable[[], T | None], deadline_s: float = UI_DEADLINE_S) -> T:
    """Poll `check` until it returns something truthy, or fail naming `what` after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            value = check()
        except WebDriverException:
            value = None
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _requested_urls(driver: WebDriver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _assert_own_origin(urls: list[str], served: Served) -> None:
    assert urls, "no request recorded"
    foreign = [u for u in urls if not (u.startswith(served.url + "/") or u.startswith(("blob:", "data:")))]
    assert not foreign, f"requests to other origins: {foreign}"


def _transcribe(driver: WebDriver, path: Path, **options: str) -> WebElement:
    """Choose `path`, set options (element id -> value), submit; the result section or the error."""
    driver.find_element(By.ID, "file").send_keys(str(path))
    for element_id, value in options.items():
        field = driver.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(value)
    driver.find_element(By.ID, "submit").click()

    def finished() -> WebElement | None:
        for element_id in ("result", "error"):
            element = driver.find_element(By.ID, element_id)
            if element.is_displayed():
                return element
        return None

    return _until(f"the transcript of {path.name}", finished, JOB_DEADLINE_S)


def _shoot(driver: WebDriver, folder: Path, name: str, at: str | None = None) -> None:
    """Screenshots at both widths (the viewport set exactly), scrolled to the element `at` (CSS)."""
    for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
        if at is None:
            driver.execute_script("window.scrollTo(0, 0)")
        else:
            driver.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'start'})", at)
        assert driver.save_screenshot(str(folder / f"{name}-{label}.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_jfk_transcript_and_a_word_click_seeks_the_player(browser: WebDriver, served: Served,
                                                          screenshots: Path) -> None:
    _shoot(browser, screenshots, "empty")
    result = _transcribe(browser, JFK_FLAC)
    assert result.get_attribute("id") == "result", browser.find_element(By.ID, "error").text
    text = browser.find_element(By.ID, "transcript").text.lower()
    assert "ask not what your country can do for you" in " ".join(text.replace(",", "").split())

    # The player has the uploaded file; clicking a word seeks it to that word's start.
    _until("the player's metadata", lambda: browser.execute_script(
        "return document.getElementById('player').readyState >= 1"))
    word = next(w for w in browser.find_elements(By.CSS_SELECTOR, ".word[data-start]")
                if float(w.get_attribute("data-start") or 0) > 3.0)
    start = float(word.get_attribute("data-start") or 0)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", word)
    word.click()
    _until(f"currentTime near {start}", lambda: abs(float(browser.execute_script(
        "return document.getElementById('player').currentTime")) - start) <= 0.3)
    assert "now" in (word.get_attribute("class") or "")  # the clicked word is highlighted
    assert browser.execute_script("return document.getElementById('player').src").startswith("blob:")
    _shoot(browser, screenshots, "jfk", at="#result")
    _assert_own_origin(_requested_urls(browser), served)


def test_two_speakers_named_in_the_srt_download(browser: WebDriver, served: Served, downloads: Path,
                                               screenshots: Path) -> None:
    result = _transcribe(browser, PYANNOTE_SAMPLE, num_speakers="2")
    assert result.get_attribute("id") == "result", browser.find_element(By.ID, "error").text
    turns = browser.find_elements(By.CSS_SELECTOR, ".turn[data-speaker]")
    speakers = {t.get_attribute("data-speaker") for t in turns}
    assert len(speakers) == 2, speakers
    colours = {t.value_of_css_property("border-left-color") for t in turns}
    assert len(colours) == 2, colours  # one colour per speaker
    assert len(browser.find_elements(By.CSS_SELECTOR, ".word[data-start]")) > 20

    first = browser.find_element(By.CSS_SELECTOR, "#speakers input")
    label = first.get_attribute("data-speaker") or ""
    assert label
    first.clear()
    first.send_keys("Ada Lovelace")
    assert all(el.text == "Ada Lovelace" for el in browser.find_elements(
        By.CSS_SELECTOR, f'.who-name[data-speaker="{label}"]'))
    _shoot(browser, screenshots, "two-speakers", at="#result")

    browser.find_element(By.CSS_SELECTOR, '.downloads button[data-format="srt"]').click()
    srt = _until("the SRT download", lambda: [p for p in downloads.glob("*.srt")])[0]
    body = _until("the SRT's content", lambda: srt.read_text(encoding="utf-8"))
    assert srt.name == "sample.srt"
    assert "Ada Lovelace: " in body and " --> " in body
    assert label not in body  # the name replaces the diarizer's label
    _assert_own_origin(_requested_urls(browser), served)


def test_a_text_file_is_refused_with_a_plain_message(browser: WebDriver, served: Served, tmp_path: Path,
                                                     screenshots: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a recording\n")
    shown = _transcribe(browser, notes)
    assert shown.get_attribute("id") == "error"
    message = shown.text
    assert message.startswith("This file is not a recording the service can read."), message
    assert "{" not in message and "unsupported_media_type" not in message  # not raw JSON
    _shoot(browser, screenshots, "refused")
    _assert_own_origin(_requested_urls(browser), served)


def test_docs_is_served_from_local_assets(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        docs = client.get("/docs")
        assert docs.status_code == 200 and "swagger-ui" in docs.text
        assert "googletagmanager" not in docs.text
        for asset in ("/static_content/swagger-ui-bundle.js", "/static_content/swagger-ui.css", "/docs.json"):
            assert client.get(asset).status_code == 200, asset
        page = client.get("/")
        assert page.status_code == 200 and "/ui/app.js" in page.text


def test_page_requests_are_recorded(browser: WebDriver, served: Served) -> None:
    # The page itself and its two assets, nothing else, before any upload.
    urls = _requested_urls(browser)
    _assert_own_origin(urls, served)
    assert {served.url + "/", served.url + "/ui/app.js", served.url + "/ui/app.css"} <= set(urls)


def test_swagger_page_renders_from_local_files(browser: WebDriver, served: Served, screenshots: Path) -> None:
    browser.get(served.url + "/docs")
    _until("Swagger UI's operations", lambda: len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) > 5)
    _shoot(browser, screenshots, "docs")
    paths = {e.get_attribute("data-path") for e in browser.find_elements(By.CSS_SELECTOR, "[data-path]")}
    assert "/jobs/transcribe/submit" in paths, paths
    _assert_own_origin(_requested_urls(browser), served)


def test_cancel_stops_following_the_job(browser: WebDriver) -> None:
    browser.find_element(By.ID, "file").send_keys(str(PYANNOTE_SAMPLE))
    browser.find_element(By.ID, "submit").click()
    cancel = browser.find_element(By.ID, "cancel")
    _until("the cancel button", cancel.is_displayed)
    cancel.click()
    message = browser.find_element(By.ID, "error").text
    assert message.startswith(("Upload cancelled.", "Stopped following the job")), message
    assert browser.find_element(By.ID, "submit").is_enabled()
    assert not browser.find_element(By.ID, "progress").is_displayed()


def test_with_api_keys_the_page_asks_for_the_key_and_keeps_it_in_the_tab(tmp_path: Path, downloads: Path) -> None:
    key = "page-test-key"
    with start_server(tmp_path / "keyed", WXS_API_KEYS=key) as keyed, _chromium(keyed.url, downloads) as driver:
        field = driver.find_element(By.ID, "api-key")
        assert field.is_displayed()
        shown = _transcribe(driver, JFK_FLAC)  # no key yet: the API answers 401
        assert shown.get_attribute("id") == "error"
        assert shown.text.startswith("An API key is required"), shown.text
        field.send_keys(key)
        result = _transcribe(driver, JFK_FLAC)
        assert result.get_attribute("id") == "result", driver.find_element(By.ID, "error").text
        assert "ask not what your country" in driver.find_element(By.ID, "transcript").text.lower()
        assert driver.execute_script("return sessionStorage.getItem('wxs-api-key')") == key
        assert driver.execute_script("return localStorage.length") == 0
        _assert_own_origin(_requested_urls(driver), keyed)
