"""A real browser for the portal's tests: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (both installed by deploy/install.sh)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = os.environ.get("VMFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("VMFLOW_CHROMEDRIVER", "/usr/bin/chromedriver")
# Where tests leave screenshots: every failing test's last page, and the README's pictures.
SCREENSHOT_DIR = Path(os.environ.get("VMFLOW_SCREENSHOT_DIR", "/tmp/vmflow-screenshots"))


class Browser:
    def __init__(self, base_url: str) -> None:
        options = Options()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.base_url = base_url

    def close(self) -> None:
        self.driver.quit()

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def sign_in(self, token: str) -> None:
        self.driver.delete_all_cookies()
        self.open("/login")
        self.find("#token").send_keys(token)
        self.find("#sign-in").click()
        self.wait_for(lambda: "/login" not in self.driver.current_url, 15, "the sign-in to finish")

    @property
    def path(self) -> str:
        return self.driver.current_url.removeprefix(self.base_url)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def exists(self, css: str) -> bool:
        return bool(self.find_all(css))

    def text(self, css: str) -> str:
        """The element's text, "" when it is not on the page."""
        try:
            return self.find(css).text
        except (NoSuchElementException, StaleElementReferenceException):
            return ""

    def wait_for(self, condition: Callable[[], object], timeout_s: float, what: str) -> object:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = condition()
            except (NoSuchElementException, StaleElementReferenceException):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (page {self.path})")
            time.sleep(0.2)

    def mark_page(self) -> None:
        """Tag the loaded document; ``same_page`` then tells whether the browser reloaded since."""
        self.driver.execute_script("window.__vmflowMark = 'kept';")

    def same_page(self) -> bool:
        return self.driver.execute_script("return window.__vmflowMark === 'kept';")

    def fetch(self, method: str, path: str, form: dict[str, str] | None = None) -> dict:
        """A request made by the page's own script, with the session's cookie: what a forged
        request from this session would look like. Returns status and body text."""
        return self.driver.execute_async_script("""
            const [method, path, form, done] = arguments;
            const init = {method, credentials: 'same-origin', redirect: 'manual'};
            if (form) init.body = new URLSearchParams(form);
            fetch(path, init).then(async r => done({status: r.status, body: await r.text()}))
                             .catch(e => done({status: 0, body: String(e)}));
        """, method, path, form)

    def screenshot(self, name: str) -> Path:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        target = SCREENSHOT_DIR / f"{name}.png"
        self.driver.save_screenshot(str(target))
        return target
