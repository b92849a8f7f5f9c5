"""A real headless browser for the dashboard's tests: Debian's chromium through its
chromedriver (`make browser` installs both), driven by Selenium with the driver's path
given, so that nothing is downloaded; and the steps every test takes with it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Server

CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(name="browser", scope="module")
def browser_fixture() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def login(browser: Any, server: Server, key: str) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{server.url}/")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.ID, "key").send_keys(key)
    go(browser, browser.find_element(By.ID, "login"))
    assert browser.current_url.endswith("/jobs")


def go(browser: Any, element: Any, *, keys: str | None = None) -> None:
    """Click what leads to another page (or type `keys` there), and wait for it: the
    click returns before the page is there."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    if keys is None:
        element.click()
    else:
        element.send_keys(keys)

    def left(_: Any) -> bool:
        """The old page is gone. Mid-navigation chromedriver may say so with an inspector
        error ("Node ... does not belong to the document") instead of a stale element."""
        try:
            page.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(browser, 20).until(left)
    WebDriverWait(browser, 20).until(
        lambda b: b.execute_script("return document.readyState") == "complete")


def text(browser: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.ID, element_id).text)


def wait_text(browser: Any, element_id: str, wanted: str, timeout: float = 20.0) -> None:
    """Until the page, reloading itself, shows `wanted` there."""
    from selenium.common.exceptions import WebDriverException

    deadline, seen = time.monotonic() + timeout, None
    while seen != wanted:
        assert time.monotonic() < deadline, f"#{element_id}: {seen!r}"
        time.sleep(0.2)
        try:
            seen = text(browser, element_id)
        except WebDriverException:  # caught mid-reload: no such element, or a stale one
            seen = None
