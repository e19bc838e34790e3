"""The demo page and the dashboard in a real browser (Playwright driving Debian's Chromium).

A real ``liverec serve`` runs in a subprocess on a free port, over a temporary data dir seeded
with a small demo catalog. Every click on the page sends real events to it. Screenshots of both
pages land in ``test-artifacts/`` for a person to look at.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium); browser tests skipped",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

from liverec.config import Settings  # noqa: E402
from liverec.demo import DemoConfig, load_demo  # noqa: E402
from liverec.store import open_store  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync",
]
# Generous: the machine may be busy (model training shares it).
WAIT_MS = 20_000
START_TIMEOUT_S = 90.0
DEMO = DemoConfig(items=240, users=30, events_per_user=(15, 30))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(data_dir: Path) -> None:
    store = open_store(Settings(data_dir=data_dir).store_url_resolved())
    try:
        load_demo(store, DEMO)
    finally:
        store.close()


class Server:
    """A ``liverec serve`` subprocess; ``start`` waits until it answers ``/v1/health``."""

    def __init__(self, data_dir: Path, port: int):
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.log = data_dir / "serve.log"

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "liverec.cli", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"liverec serve exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2.0).json().get("status") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"liverec serve did not answer within {START_TIMEOUT_S} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.process = None

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=10.0, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("browser-data")
    seed(data_dir)
    srv = Server(data_dir, free_port())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


class Console:
    """Errors the page reported: console errors and uncaught exceptions."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


@pytest.fixture
def page(browser) -> Iterator[tuple[object, Console]]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    console = Console(tab)
    yield tab, console
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def rec_ids(page) -> list[str]:
    return page.eval_on_selector_all("#recs .rec", "nodes => nodes.map(n => n.dataset.itemId)")


def rec_categories(page) -> list[list[str]]:
    return page.eval_on_selector_all("#recs .rec", "nodes => nodes.map(n => n.dataset.categories.split('|'))")


def latest_history(page) -> tuple[str, str]:
    """(type, what) of the newest entry of the history panel."""
    first = page.locator("#history li").first
    return first.locator(".type").inner_text(), first.locator(".what").inner_text()


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def wait_for_list(page, user: str) -> None:
    """Wait until the list shown is the one for ``user`` and not mid-refresh."""
    page.wait_for_function(
        "user => document.getElementById('recs-title').textContent.endsWith(user)"
        " && document.getElementById('recs').getAttribute('aria-busy') === 'false'"
        " && document.querySelectorAll('#recs .rec').length > 0",
        arg=user,
    )


def act(page, item_id: str, action: str) -> None:
    """Click one action button of one item and wait for the refreshed list."""
    page.locator(f'#recs .rec[data-item-id="{item_id}"] button[data-action="{action}"]').click()
    page.wait_for_function("document.getElementById('recs').getAttribute('aria-busy') === 'false'"
                           " && document.getElementById('message').dataset.kind === 'done'")


def reload_and_wait(page, user: str) -> None:
    page.reload()
    wait_for_list(page, user)


# ---- the demo page ---------------------------------------------------------------------------------

def test_feedback_changes_the_list_and_blocks_hold(server: Server, page):
    tab, console = page
    user = "user-0005"
    tab.goto(f"{server.url}/")
    tab.wait_for_selector("#user-select option[value='user-0005']", state="attached")
    tab.select_option("#user-select", user)
    wait_for_list(tab, user)
    assert tab.get_attribute("#connection", "data-state") == "online"
    before = rec_ids(tab)
    assert len(before) == 12
    history_before = latest_history(tab)

    # Dislike the top item: it goes down the list or leaves it, and the history shows it.
    disliked = before[0]
    title = tab.locator(f'#recs .rec[data-item-id="{disliked}"] h3').inner_text()
    act(tab, disliked, "dislike")
    after = rec_ids(tab)
    assert disliked not in after or after.index(disliked) > 0, (disliked, after)
    assert latest_history(tab) == ("dislike", title)
    assert tab.locator("#message").inner_text().startswith("Disliked")

    # Undo reverts it: the history is as it was before the dislike.
    tab.locator("#undo").click()
    tab.wait_for_function("document.getElementById('message').textContent.startsWith('Undid')")
    wait_for_list(tab, user)
    assert latest_history(tab) == history_before
    assert tab.locator("#undo").is_hidden()

    # Block an item: it leaves at once and never comes back, across reloads.
    blocked = rec_ids(tab)[1]
    act(tab, blocked, "block")
    assert blocked not in rec_ids(tab)
    assert tab.locator("#left-list").inner_text().startswith("Left the list")
    assert tab.locator(".rec.is-new").count() >= 1  # a newcomer took the free place
    for _ in range(3):
        reload_and_wait(tab, user)
        assert blocked not in rec_ids(tab)
    assert tab.locator("#blocks li").filter(has_text="Unblock").count() == 1

    # Block a whole category: none of its items shows, across reloads.
    category = rec_categories(tab)[0][0]
    act(tab, rec_ids(tab)[0], "block-category")
    for _ in range(3):
        assert all(category not in cats for cats in rec_categories(tab)), (category, rec_categories(tab))
        assert blocked not in rec_ids(tab)
        reload_and_wait(tab, user)
    assert tab.locator("#blocks").inner_text().count("Unblock") == 2
    assert server.api("GET", f"/v1/users/{user}").json()["blocked"] == {"item": [blocked], "category": [category]}

    shot(tab, "demo.png")
    assert console.errors == []


def test_search_and_keyboard(server: Server, page):
    tab, console = page
    user = "user-0007"
    tab.goto(f"{server.url}/?user={user}")
    wait_for_list(tab, user)
    tab.fill("#search-input", "jazz ballads")
    tab.press("#search-input", "Enter")
    tab.wait_for_function("document.getElementById('message').textContent.startsWith('Searched')")
    wait_for_list(tab, user)
    first = tab.locator("#history li").first
    assert first.locator(".type").inner_text() == "search" and "jazz ballads" in first.inner_text()

    # Keyboard: the action buttons are reachable with Tab and labelled with the item.
    tab.locator("#recs .rec").first.locator("button").first.focus()
    label = tab.evaluate("document.activeElement.getAttribute('aria-label')")
    assert label.startswith("Like “")
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.dataset.action") == "dislike"
    assert console.errors == []


def test_unknown_user_and_empty_catalog(server: Server, page):
    tab, console = page
    tab.goto(f"{server.url}/?user=nobody-here")
    wait_for_list(tab, "nobody-here")  # popular items for a user without history
    assert tab.locator("#no-history").is_visible()
    assert tab.locator("#user-select").input_value() == "nobody-here"

    tab.click("#new-user")
    tab.wait_for_function("document.getElementById('recs-title').textContent.includes('anon-')")
    assert tab.locator("#no-history").is_visible()

    tab.goto(f"{server.url}/?app=empty-shop&user=someone")
    tab.wait_for_selector("#empty-catalog")
    assert "empty" in tab.locator("#empty-catalog").inner_text()
    assert tab.locator("#recs .rec").count() == 0
    assert console.errors == []


# ---- the dashboard ------------------------------------------------------------------------------

def test_dashboard_shows_experiments_with_their_metrics(server: Server, page):
    tab, console = page
    body = {"name": "mmr", "variants": [{"name": "A"}, {"name": "B", "ranking": {"diversity": 0.3}}]}
    created = server.api("POST", "/v1/experiments", json=body)
    assert created.status_code == 200, created.text
    exp_id = created.json()["experiment_id"]
    try:
        for k in range(6):
            assert server.api("GET", f"/v1/users/exp-user-{k}/recommendations").json()["experiment"]["id"] == exp_id
        tab.goto(f"{server.url}/dashboard")
        wait_until(lambda: tab.locator(f"#experiments tr[data-experiment-id='{exp_id}']").count() == 1, "the experiment's row")
        assert "no difference yet" in tab.locator(f"[data-testid='verdict-{exp_id}']").inner_text()
        assert tab.locator("#experiments tr[data-variant='A']").count() == 1
        wait_until(lambda: sum(int(tab.locator(f"#experiments tr[data-variant='{v}'] td").nth(2).inner_text())
                               for v in "AB") == 60, "the variants' impressions")
        assert "1 running" in tab.locator("#experiments-note").inner_text()
        shot(tab, "dashboard-experiments.png")
        assert console.errors == []
    finally:
        assert server.api("POST", f"/v1/experiments/{exp_id}/stop").json()["status"] == "stopped"


def test_dashboard_updates_after_events(server: Server, page):
    tab, console = page
    tab.goto(f"{server.url}/dashboard")
    tab.wait_for_function("document.getElementById('total-events') !== null")
    read_total = lambda: int(tab.locator("#total-events").inner_text().replace(",", ""))  # noqa: E731
    start = read_total()
    assert tab.locator("#catalog-items").inner_text() == str(DEMO.items)
    assert tab.locator("#model-scorer").inner_text() != ""

    shown = [{"user_id": "dash-user", "item_id": f"item-{k:05d}", "type": "impression"} for k in range(20)]
    reactions = [{"user_id": "dash-user", "item_id": f"item-{k:05d}", "type": t}
                 for k, t in enumerate(["click", "click", "like", "dislike", "skip"])]
    assert server.api("POST", "/v1/events", json={"events": shown + reactions}).json()["accepted"] == 25
    for _ in range(5):
        assert server.api("GET", "/v1/users/dash-user/recommendations").status_code == 200

    wait_until(lambda: read_total() >= start + 25, "the events figure to count the new events")
    wait_until(lambda: tab.locator("#ctr").inner_text() not in ("—", "0.0%"), "a CTR figure")
    assert tab.locator("#negative").inner_text().endswith("%")
    assert int(tab.locator("#total-recs").inner_text()) >= 5
    assert "ms" in tab.locator("#latency").inner_text()
    # The series grows every ~2 s: wait for a few points in the plots.
    wait_until(lambda: int(tab.get_attribute("#spark-events", "data-points") or 0) >= 3, "three samples in the plots")
    assert tab.locator("#spark-events path.line").count() >= 1
    assert tab.locator("#popular li").count() >= 1 and tab.locator("#newest li").count() >= 1
    wait_until(lambda: int(tab.locator("#log-events").inner_text().replace(",", "")) >= start + 25, "the log's event count")
    assert "no stream consumer" in tab.locator("#streams-note").inner_text()  # events came over HTTP only
    shot(tab, "dashboard.png")
    assert console.errors == []


# ---- bad states ------------------------------------------------------------------------------------

def test_page_reconnects_after_a_server_restart(tmp_path: Path, page):
    tab, _ = page  # connection-refused errors are expected in the console while the server is down
    seed(tmp_path)
    srv = Server(tmp_path, free_port())
    srv.start()
    try:
        tab.goto(f"{srv.url}/?user=user-0002")
        wait_for_list(tab, "user-0002")
        srv.stop()
        tab.locator('#recs .rec button[data-action="skip"]').first.click()
        tab.wait_for_selector("#banner:not([hidden])")
        assert "reconnecting" in tab.locator("#banner").inner_text()
        assert tab.get_attribute("#connection", "data-state") == "reconnecting"
        assert tab.locator("#recs .rec").count() > 0  # the last list stays on screen
        srv.start()
        tab.wait_for_selector("#banner", state="hidden")
        assert tab.get_attribute("#connection", "data-state") == "online"
        wait_for_list(tab, "user-0002")
    finally:
        srv.stop()


# ---- with API keys ---------------------------------------------------------------------------------

def test_the_pages_ask_for_a_key_once_keys_are_on(tmp_path: Path, page):
    tab, console = page
    seed(tmp_path)
    made = subprocess.run([sys.executable, "-m", "liverec.cli", "keys", "create", "--data-dir", str(tmp_path),
                           "--app", "default", "--scopes", "admin"], capture_output=True, text=True, timeout=60, check=True)
    key = made.stdout.splitlines()[-1]
    srv = Server(tmp_path, free_port())
    srv.start()
    try:
        asked: list[str] = []
        tab.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept(key)))
        tab.goto(f"{srv.url}/dashboard")
        wait_until(lambda: tab.locator("#catalog-items").inner_text() == str(DEMO.items), "the dashboard's figures")
        assert len(asked) == 1 and "API key" in asked[0]
        tab.goto(f"{srv.url}/?user=user-0003")  # the key is kept in the browser: no second question
        wait_for_list(tab, "user-0003")
        assert len(asked) == 1
        assert srv.api("GET", "/v1/stats").status_code == 401  # the figures need the key, the pages none
    finally:
        srv.stop()
    # the first, refused request is in the console; nothing else is
    assert [e for e in console.errors if "401" not in e] == []
