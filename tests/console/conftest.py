"""A running development box with console users, and headless Debian chromium driven by selenium."""

from __future__ import annotations

import os
import shutil
import ssl
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from tests.console.png import non_blank_share
from tests.helpers.box import Box, make_box, pids_under, wait_port

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts"
ADMIN_PASSWORD = "operator password 1"
USER_PASSWORD = "customer password 1"


@dataclass
class Console:
    box: Box
    url: str
    admin: str
    user: str

    def request(self, method: str, path: str, data: bytes | None = None, session: str | None = None,
                content_type: str = "application/x-www-form-urlencoded") -> tuple[int, bytes, dict[str, str]]:
        """A plain HTTPS request (what a script or another site's form could send), trusting the box's cert."""
        ctx = ssl.create_default_context(cafile=self.box.cfg.tls.cert)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if session:
            req.add_header("Cookie", f"console_session={session}")

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a: object, **k: object) -> None:
                return None

        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect)
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    box = make_box(tmp_path_factory.mktemp("console"))
    # A second limit class, for the accounts page's class change.
    data = tomllib.loads(box.config_file.read_text())
    data.setdefault("limits", {}).setdefault("classes", {"default": {"messages_per_minute": 30, "burst": 20,
                                                                     "per_day": 1000}})
    data["limits"]["classes"]["bulk"] = {"messages_per_minute": 120, "burst": 60}
    box.config_file.write_text(tomli_w.dumps(data))
    admin = f"admin@{box.domain}"
    box.cli("user", "add", admin, "--admin", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    user = box.add_user("bob", USER_PASSWORD)
    box.add_user("carol")
    box.add_user("dave")
    box.add_user("frank")
    box.add_user("gone")
    box.up()
    try:
        wait_port(box.host("console"), box.port("console"))
        yield Console(box, f"https://127.0.0.1:{box.port('console')}", admin, user)
    finally:
        box.down()
        leaked = pids_under(box.dir)
        assert not leaked, f"processes left behind under {box.dir}: {leaked}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"missing test peer {path}: `make test` installs chromium and chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(arg)
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    # The pages must work without JavaScript (issue 17): the browser runs with it off.
    opts.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    opts.accept_insecure_certs = True  # the dev box's certificate is self-signed
    # A driver path given: selenium does not run Selenium Manager, so nothing downloads a browser.
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def login(driver: webdriver.Chrome, c: Console, who: str, password: str, path: str = "/login") -> None:
    driver.delete_all_cookies()
    driver.get(c.url + path)
    driver.find_element(By.ID, "login-name").send_keys(who)
    driver.find_element(By.ID, "password").send_keys(password)
    submit(driver, driver.find_element(By.ID, "login-submit"))


def submit(driver: webdriver.Chrome, button: WebElement) -> None:
    """Click a form's button and wait for the answer's page: the click returns before the navigation
    ends, and the next command must not race the POST's redirect."""
    old = driver.find_element(By.TAG_NAME, "html")
    button.click()
    WebDriverWait(driver, 30).until(lambda _: _replaced(old))


def _replaced(old: WebElement) -> bool:
    """Whether OLD's page has been replaced. Like selenium's staleness_of, but also counting the
    answer ChromeDriver gives when asked in the middle of the navigation (seen once in CI): an
    "unknown error" saying the node does not belong to the document, instead of a stale reference."""
    try:
        old.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc) or "No node with given id" in str(exc):
            return True
        raise
    return False


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """Keep a screenshot under tests/console/artifacts/ and check that the page really rendered."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    data = driver.get_screenshot_as_png()
    path.write_bytes(data)
    share, colours = non_blank_share(data)
    assert share > 0.01 and colours >= 3, f"{path}: looks blank ({share:.3%} non-background, {colours} colours)"
    return path


def require_curl() -> str:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("missing test peer curl: `make test` installs it")
    return curl
