"""The console (`/ui`) in a real headless Chromium: Debian's `chromium`, driven through its
`chromium-driver` by Selenium (nothing is downloaded), and what a person sees and does there."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
T = TypeVar("T")


def start_chromium(width: int = 1280, height: int = 900) -> WebDriver:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            pytest.fail(f"{path} is not installed; scripts/install --system installs {package}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        # Root in a container has no user namespace for Chromium's sandbox.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    # The page's console (script errors, Content-Security-Policy refusals) for the tests.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


class Console:
    """The page, as a person uses it: rows by model and worker, buttons, the message line."""

    def __init__(self, driver: WebDriver, url: str) -> None:
        self.driver = driver
        self.url = url

    def open(self) -> Console:
        self.driver.get(self.url + "/ui")
        return self

    def wait(self, condition: Callable[[], T | None], within: float = 10.0) -> T:
        """What `condition` returns once truthy; fails if it is not within `within` s."""
        # The page redraws every second: an element read halfway through may be gone.
        result = WebDriverWait(
            self.driver,
            within,
            poll_frequency=0.1,
            ignored_exceptions=[StaleElementReferenceException],
        ).until(lambda _: condition())
        assert result is not None  # `until` returns only a truthy value
        return result

    def rows(self, model: str) -> dict[str, WebElement]:
        """The model's worker rows, by worker id."""
        found = self.driver.find_elements(
            By.CSS_SELECTOR, f'section[data-model="{model}"] tbody tr'
        )
        return {row.get_attribute("data-worker") or "": row for row in found}

    def row(self, model: str, worker: str) -> WebElement:
        return self.wait(lambda: self.rows(model).get(worker))

    def status(self, model: str, worker: str) -> str:
        """The text on the worker's status badge (empty if the row is not there)."""
        selector = f'section[data-model="{model}"] tr[data-worker="{worker}"] .badge'
        text = self.driver.execute_script(
            "const badge = document.querySelector(arguments[0]);"
            "return badge ? badge.textContent : '';",
            selector,
        )
        return str(text)

    def engine(self, model: str, worker: str) -> tuple[str, str]:
        """What the worker's row says of its engine's load: its queue and its KV-cache use
        (empty if the row is not there)."""
        row = f'section[data-model="{model}"] tr[data-worker="{worker}"]'
        texts = self.driver.execute_script(
            "return [arguments[0] + ' .engine-queue', arguments[0] + ' .engine-kv'].map("
            "(s) => { const found = document.querySelector(s);"
            " return found ? found.textContent : ''; });",
            row,
        )
        queue, kv = texts
        return str(queue), str(kv)

    def logged_errors(self) -> list[dict[str, Any]]:
        """Errors the page logged (script errors, refusals) since the last call."""
        assert isinstance(self.driver, webdriver.Chrome)
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return [entry for entry in entries if entry["level"] == "SEVERE"]

    def message(self) -> str:
        return self.driver.find_element(By.ID, "message-text").text

    def live_error(self) -> str:
        return self.driver.find_element(By.ID, "live-error").text

    def button(self, model: str, worker: str, label: str) -> WebElement:
        row = self.row(model, worker)
        button = next(b for b in row.find_elements(By.TAG_NAME, "button") if b.text == label)
        return self.reveal(button)

    def reveal(self, element: WebElement) -> WebElement:
        """Scrolled to the middle of the window, as a person would, clear of the message line
        that stays at the top."""
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        return element

    def confirm(self) -> None:
        """Answer OK in the confirmation dialog."""
        ok = self.wait(lambda: self._visible(By.ID, "confirm-ok"))
        ok.click()

    def _visible(self, by: str, value: str) -> WebElement | None:
        element = self.driver.find_element(by, value)
        return element if element.is_displayed() else None

    def use_token(self, token: str) -> None:
        field = self.driver.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()

    def fill_registration(self, **fields: str) -> None:
        form = self.driver.find_element(By.ID, "register-form")
        for name, value in fields.items():
            field = form.find_element(By.NAME, name)
            if field.tag_name == "select":
                field.find_element(By.CSS_SELECTOR, f'option[value="{value}"]').click()
            else:
                field.clear()
                field.send_keys(value)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
