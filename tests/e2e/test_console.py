"""The console (`/ui`) in a real headless Chromium, in front of real balancer and worker
processes: what it shows follows the API, and what is done there reaches the API."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Callable, Iterator

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.browser import Console, start_chromium
from tests.e2e.conftest import listed, register_openai, unique_model
from tests.e2e.load import Load, chat

PROBE_INTERVAL = 0.3
PROBE_TIMEOUT = 0.5
UNHEALTHY_THRESHOLD = 3
HEALTHY_THRESHOLD = 2
PROBE_DEADLINE = UNHEALTHY_THRESHOLD * (PROBE_INTERVAL + PROBE_TIMEOUT) + 2
"""Seconds within which the probes eject a dead worker (and the page shows it)."""


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    chromium = start_chromium()
    try:
        yield chromium
    finally:
        chromium.quit()


@pytest.fixture(scope="module")
def prober(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    """A balancer that probes often, without an admin token (loopback manages it)."""
    with BalancerProcess(
        tmp_path_factory.mktemp("console"),
        env={
            "BALANCER_PROBE_INTERVAL": str(PROBE_INTERVAL),
            "BALANCER_PROBE_TIMEOUT": str(PROBE_TIMEOUT),
            "BALANCER_UNHEALTHY_THRESHOLD": str(UNHEALTHY_THRESHOLD),
            "BALANCER_HEALTHY_THRESHOLD": str(HEALTHY_THRESHOLD),
        },
    ) as balancer:
        yield balancer


@pytest.fixture
def console(driver: WebDriver, prober: BalancerProcess) -> Console:
    driver.set_window_size(1280, 900)
    return Console(driver, prober.url).open()


def owners(api: httpx.Client, model: str) -> set[str]:
    return {row["owner"] for row in listed(api, model).values()}


def test_the_page_lists_the_workers_registered_through_the_api(
    console: Console, api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model("listed")
    first = register_openai(api, model, spawn("a").url, owner="team-a", max_concurrency=8)
    second = register_openai(api, model, spawn("b").url, weight=3)

    console.wait(lambda: set(console.rows(model)) == {first, second})
    console.wait(lambda: console.status(model, first) == "healthy")
    row = console.row(model, first).text
    assert "team-a" in row and "/ 8" in row
    assert console.row(model, second).find_element(By.CSS_SELECTOR, ".col-weight").text == "3"
    # At 1280 px every column is in view: nothing to scroll sideways.
    section = console.driver.find_element(By.CSS_SELECTOR, f'section[data-model="{model}"]')
    wrap = section.find_element(By.CSS_SELECTOR, ".table-wrap")
    assert wrap.get_property("scrollWidth") <= wrap.get_property("clientWidth")  # type: ignore[operator]

    # It follows the API without a reload: a worker taken offline there leaves the page.
    reply = api.post(
        "/api/server/offline",
        json={
            "model_name": model,
            "req_url_template": listed(api, model)[second]["req_url_template"],
        },
    )
    assert reply.status_code == 200
    console.wait(lambda: set(console.rows(model)) == {first})


def test_on_a_phone_the_page_needs_no_sideways_scrolling(
    driver: WebDriver,
    prober: BalancerProcess,
    api: httpx.Client,
    spawn: Callable[..., WorkerProcess],
) -> None:
    model = unique_model("phone")
    worker = register_openai(api, model, spawn("p").url)
    driver.set_window_size(390, 844)
    console = Console(driver, prober.url).open()
    console.row(model, worker)
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= driver.execute_script("return window.innerWidth")
    assert console.button(model, worker, "Drain").is_displayed()


def test_an_engines_queue_and_kv_cache_use_are_shown_and_a_dash_where_unknown(
    console: Console, api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model("engine")
    # A simulated engine that runs one request at a time; a long answer holds the KV-cache
    # blocks it will need (about a third of the cache). The probes read its /metrics.
    engine = spawn("engine", engine=True, slots=1, max_tokens=10_000, decode_step=0.01)
    plain = spawn("plain")  # no /metrics: nothing is known of its engine
    engine_id = register_openai(api, model, engine.url)
    plain_id = register_openai(api, model, plain.url)
    console.wait(lambda: console.engine(model, engine_id) == ("queue 0", "KV 0 %"))
    assert console.engine(model, plain_id) == ("queue –", "KV –")

    # Another client of the engine fills its only slot and waits in its queue.
    body = {"model": "fake-model", "prompt": "a long story", "stream": True}
    with (
        httpx.Client(base_url=engine.url, timeout=30) as other,
        other.stream("POST", "/v1/completions", json=body),
        other.stream("POST", "/v1/completions", json=body),
    ):
        console.wait(lambda: console.engine(model, engine_id)[0] == "queue 2")
        kv = console.wait(lambda: _percent(console.engine(model, engine_id)[1]))
        assert 0 < kv <= 100
    assert console.engine(model, plain_id) == ("queue –", "KV –")


def _percent(kv: str) -> int | None:
    """The percentage in "KV 12 %", if above 0."""
    value = kv.removeprefix("KV ").removesuffix(" %")
    return int(value) if value.isdigit() and int(value) > 0 else None


def test_a_worker_killed_under_load_turns_ejected_then_healthy_after_a_restart(
    console: Console,
    api: httpx.Client,
    prober: BalancerProcess,
    spawn: Callable[..., WorkerProcess],
) -> None:
    model = unique_model("killed")
    doomed, steady = spawn("doomed"), spawn("steady")
    victim = register_openai(api, model, doomed.url)
    register_openai(api, model, steady.url)
    console.wait(lambda: console.status(model, victim) == "healthy")

    with Load(prober.url, chat(model)) as load:
        load.wait_for(20)
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        console.wait(lambda: console.status(model, victim) == "ejected", within=PROBE_DEADLINE)
        assert "1 ejection" in console.row(model, victim).text

        doomed.start()  # the same port
        console.wait(lambda: console.status(model, victim) == "healthy", within=PROBE_DEADLINE)
        load.wait_for(10)


def test_register_weight_drain_and_offline_through_the_page_reach_the_api(
    console: Console, api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model("managed")
    kept, drained = spawn("kept"), spawn("drained")

    # A registration the API refuses: its own reason is shown, and nothing is registered.
    console.fill_registration(model_name=model, req_url_template="ftp://nowhere", api="openai")
    console.wait(lambda: "must be an http:// or https:// URL" in console.message())
    assert "refused (HTTP 400)" in console.message()
    assert listed(api, model) == {}

    registered: set[str] = set()
    for worker in (kept, drained):
        registered.add(worker.name)
        console.fill_registration(
            model_name=model, req_url_template=f"{worker.url}/v1", api="openai", owner=worker.name
        )
        console.wait(lambda: owners(api, model) == registered)
        # The API may list the worker before the page has read its answer and said so.
        console.wait(lambda: f"register LLM {model} succeed!" in console.message())
    ids = {row["owner"]: wid for wid, row in listed(api, model).items()}
    assert set(ids) == {"kept", "drained"}

    # A weight, typed and confirmed with the keyboard.
    field = console.reveal(console.row(model, ids["kept"]).find_element(By.NAME, "weight"))
    field.send_keys("2.5", Keys.ENTER)
    console.wait(lambda: listed(api, model)[ids["kept"]]["weight"] == 2.5)
    console.wait(lambda: "is now 2.5" in console.message())

    console.button(model, ids["drained"], "Drain").click()
    console.confirm()
    console.wait(lambda: ids["drained"] not in listed(api, model))
    console.wait(lambda: ids["drained"] not in console.rows(model))

    console.button(model, ids["kept"], "Offline").click()
    console.confirm()
    console.wait(lambda: listed(api, model) == {})
    console.wait(lambda: "succeed" in console.message())


def test_offline_asks_first_and_cancel_keeps_the_worker(
    console: Console, api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model("cancel")
    worker = register_openai(api, model, spawn("c").url)
    console.button(model, worker, "Offline").click()
    console.wait(lambda: console.driver.find_element(By.ID, "confirm").is_displayed())
    console.driver.find_element(By.ID, "confirm-cancel").click()
    console.wait(lambda: not console.driver.find_element(By.ID, "confirm").is_displayed())
    assert set(listed(api, model)) == {worker}


def test_drain_under_steady_load_loses_no_request(
    console: Console,
    api: httpx.Client,
    prober: BalancerProcess,
    spawn: Callable[..., WorkerProcess],
) -> None:
    model = unique_model("drain")
    old, new = spawn("old", latency=0.05), spawn("new", latency=0.05)
    retiring = register_openai(api, model, old.url)
    register_openai(api, model, new.url)
    console.wait(lambda: console.status(model, retiring) == "healthy")

    with Load(prober.url, chat(model), clients=6) as load:
        load.wait_for(30)
        console.button(model, retiring, "Drain").click()
        console.confirm()
        console.wait(lambda: retiring not in listed(api, model))
        served_by_old = old.served()
        load.wait_for(30)
    assert old.served() == served_by_old  # no request reached it once it was removed
    assert load.failures == []
    assert set(load.statuses) == {200}
    assert len(load.statuses) >= 60


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BalancerProcess, str]]:
    token = secrets.token_urlsafe(12)
    balancer = BalancerProcess(
        tmp_path_factory.mktemp("guarded"), env={"BALANCER_ADMIN_TOKEN": token}
    )
    balancer.start()
    yield balancer, token
    balancer.stop()


def test_without_the_admin_token_actions_are_refused_with_a_visible_message(
    driver: WebDriver, guarded: tuple[BalancerProcess, str], spawn: Callable[..., WorkerProcess]
) -> None:
    balancer, token = guarded
    model = unique_model("guarded")
    with balancer.client(headers={"Authorization": f"Bearer {token}"}) as admin:
        worker = register_openai(admin, model, spawn("g").url)
        driver.set_window_size(1280, 900)
        console = Console(driver, balancer.url).open()

        # Without the token it shows nothing, and says why.
        console.wait(lambda: "HTTP 401" in console.live_error())
        assert driver.find_element(By.ID, "live-error").is_displayed()
        assert driver.switch_to.active_element == driver.find_element(By.ID, "token")

        # Given once, it is kept for the tab: the page shows the workers from then on.
        console.use_token(token)
        console.row(model, worker)
        driver.refresh()
        console.row(model, worker)

        # Forgotten: the page says it can no longer show the workers, and an action is
        # refused by the balancer, visibly, with its reason; nothing changes.
        driver.find_element(By.ID, "forget-token").click()
        console.wait(lambda: "HTTP 401" in console.live_error())
        console.button(model, worker, "Offline").click()
        console.confirm()
        console.wait(lambda: "Offline refused (HTTP 401)" in console.message())
        message = driver.find_element(By.ID, "message")
        assert message.is_displayed()
        assert message.get_attribute("role") == "alert"
        assert "BALANCER_ADMIN_TOKEN" in message.text
        assert set(listed(admin, model)) == {worker}


def test_the_page_works_with_no_internet_and_logs_no_error(console: Console) -> None:
    """Everything it loads comes from the balancer: no request leaves for another host; and
    its script runs under its own Content-Security-Policy without an error."""
    console.logged_errors()  # what earlier tests' refusals logged goes
    console.open()
    console.wait(lambda: "Updated" in console.driver.find_element(By.ID, "updated").text)
    entries = console.driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert entries and all(name.startswith(console.url) for name in entries), entries
    assert console.logged_errors() == []


# Contrast of two CSS colours (WCAG 2), computed in the page from what it really draws.
_CONTRASTS = """
const rgb = (c) => c.match(/[0-9.]+/g).slice(0, 3).map(Number);
const lum = (c) => {
  const [r, g, b] = rgb(c).map((v) => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const ratio = (a, b) => (Math.max(lum(a), lum(b)) + 0.05) / (Math.min(lum(a), lum(b)) + 0.05);
const background = (el) => {
  for (; el; el = el.parentElement) {
    const bg = getComputedStyle(el).backgroundColor;
    if (!bg.startsWith("rgba(0, 0, 0, 0)")) return bg;
  }
  return "rgb(255, 255, 255)";
};
return [...document.querySelectorAll(".badge, button, .small, th, td, label, h1, h2")]
  .filter((el) => el.offsetParent !== null && el.textContent.trim())
  .map((el) => [el.textContent.trim().slice(0, 30),
    ratio(getComputedStyle(el).color, background(el))]);
"""

_UNNAMED = """
return [...document.querySelectorAll("button, input, select, textarea")]
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label")
    && !el.textContent.trim())
  .map((el) => el.outerHTML.slice(0, 80));
"""


def test_every_control_is_named_text_has_contrast_and_the_keyboard_drains(
    console: Console, api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model("keys")
    worker = register_openai(api, model, spawn("k").url)
    console.wait(lambda: console.status(model, worker) == "healthy")

    assert console.driver.execute_script(_UNNAMED) == []
    low = [
        (text, ratio) for text, ratio in console.driver.execute_script(_CONTRASTS) if ratio < 4.5
    ]
    assert low == []

    # Enter on the row's Drain button, Tab to the dialog's Drain, Enter.
    console.button(model, worker, "Drain").send_keys(Keys.ENTER)
    console.wait(lambda: console.driver.find_element(By.ID, "confirm").is_displayed())
    active = console.driver.switch_to.active_element
    assert active.text == "Cancel"  # the safe answer has the focus
    active.send_keys(Keys.TAB)
    console.driver.switch_to.active_element.send_keys(Keys.ENTER)
    console.wait(lambda: worker not in listed(api, model))
