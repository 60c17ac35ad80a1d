"""The labelling app served for real (uvicorn over loopback): concurrent labellers, a SIGKILL in the
middle of the load, and a labeller in a headless Chromium clicking and pressing keys."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_lab.labelling.campaign import Campaign, CampaignSettings
from rlhf_lab.labelling.client import ApiError, LabelClient, run_load
from rlhf_lab.labelling.server import LabelServer
from rlhf_lab.labelling.store import LabelStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def campaign_with(tmp_path: Path, labellers: int, items: int, k: int = 2):
    store = LabelStore(tmp_path / "labels.db")
    campaign = Campaign(store, "c", CampaignSettings(redundancy=1))
    tokens = {f"l{i:02d}": store.add_labeller("c", f"l{i:02d}") for i in range(labellers)}
    store.add_items("c", "b", [{"prompt": f"prompt {i}", "responses": [f"r{i}.{j}" for j in range(k)]} for i in range(items)])
    return store, campaign, tokens


def assert_stored_exactly_once(db: Path, acknowledged):
    """Every acknowledged label is in the database once, with the ranking the client sent."""
    store = LabelStore(db)
    people = {p.id: p.name for p in store.labellers("c")}
    stored = {}
    for label in store.labels("c"):
        key = (people[label.labeller_id], label.item_id)
        assert key not in stored, f"{key} stored twice"
        stored[key] = label.ranking
    for name, item_id, ranking in acknowledged:
        assert stored.get((name, item_id)) == ranking, f"acknowledged label {(name, item_id)} is missing or different"
    return stored


@pytest.mark.slow
def test_twenty_concurrent_labellers_each_label_stored_exactly_once(tmp_path):
    store, campaign, tokens = campaign_with(tmp_path, labellers=20, items=2100)
    with LabelServer(campaign) as server:
        result = run_load(server.url, tokens, labels_each=100, retry_every=10)
    assert result.errors == []
    assert len(result.acknowledged) == 2000
    stored = assert_stored_exactly_once(tmp_path / "labels.db", result.acknowledged)
    assert len(stored) == 2000
    assert len({item for _, item, _ in result.acknowledged}) == 2000  # redundancy 1: leases spread the labellers
    print(f"\n{result.labels_per_second:.0f} labels/s, p99 latency {1000 * result.latency_quantile(0.99):.0f} ms")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "rlhf_lab", "label", "serve", "--db", str(db), "--campaign", "c", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    client = LabelClient(f"http://127.0.0.1:{port}", None, timeout=60)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            client.request("GET", "/api/me")
        except ApiError:
            return process  # 401: the server answers
        except OSError:
            if process.poll() is not None:
                raise AssertionError(f"server exited: {process.stderr.read()}")
            time.sleep(0.1)
    raise AssertionError("server did not start")


@pytest.mark.slow
def test_sigkill_mid_load_loses_no_acknowledged_label(tmp_path):
    store, campaign, tokens = campaign_with(tmp_path, labellers=8, items=3000)
    store.close()
    port = free_port()
    server = start_server(tmp_path / "labels.db", port)
    import threading

    killer_done = threading.Event()

    def kill_when_busy():
        # Kill once a few hundred labels are in: in the middle of writes, not before or after.
        probe = LabelStore(tmp_path / "labels.db")
        while probe.count_labels("c") < 300 and server.poll() is None:
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        killer_done.set()

    threading.Thread(target=kill_when_busy, daemon=True).start()
    result = run_load(f"http://127.0.0.1:{port}", tokens, labels_each=300, retry_every=0)
    server.wait()
    assert killer_done.is_set() and server.returncode == -signal.SIGKILL
    assert result.errors, "the load should have been cut by the kill"
    # At least 300 labels were committed when it died; the last few may have died with their answers
    # (stored, never acknowledged), so only "cut mid-way" is certain of the acknowledged count.
    assert 0 < len(result.acknowledged) < 8 * 300
    before_restart = len(result.acknowledged)

    server = start_server(tmp_path / "labels.db", port)
    try:
        assert len(assert_stored_exactly_once(tmp_path / "labels.db", result.acknowledged)) >= 300
        # Labelling goes on after the restart: a retry of an acknowledged label is a duplicate, not a second label.
        name, item_id, ranking = result.acknowledged[0]
        answer = LabelClient(f"http://127.0.0.1:{port}", tokens[name]).label(item_id, ranking=ranking)
        assert answer == {"saved": True, "duplicate": True}
        more = run_load(f"http://127.0.0.1:{port}", tokens, labels_each=5, retry_every=0)
        assert more.errors == [] and len(more.acknowledged) == 40
        assert_stored_exactly_once(tmp_path / "labels.db", result.acknowledged + more.acknowledged)
    finally:
        server.terminate()
        server.wait()
    assert before_restart == len(result.acknowledged)


@pytest.fixture
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install Debian's chromium (see .ci/run)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_a_labeller_labels_with_a_click_and_a_key_in_a_real_browser(tmp_path, browser):
    from playwright.sync_api import expect  # (string waits are eval, which the page's CSP forbids)

    store = LabelStore(tmp_path / "labels.db")
    campaign = Campaign(store, "c", CampaignSettings(redundancy=1))
    token = store.add_labeller("c", "ann")
    admin = store.add_labeller("c", "boss", "admin")
    hostile = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=1</script>"
    store.add_items("c", "b", [
        {"prompt": hostile, "responses": ["first answer " + hostile, "second answer\n" + "long line " * 200]},
        {"prompt": "second prompt", "responses": ["left", "right"]},
        {"prompt": "third prompt", "responses": ["one", "two", "three"]},
    ])
    with LabelServer(campaign) as server:
        page = browser.new_page()
        page.goto(f"{server.url}/#token={token}")
        page.wait_for_selector("#task:not([hidden])")
        assert page.text_content("#prompt") == hostile  # shown as text ...
        assert page.evaluate("window.pwned") is None  # ... never run
        assert "token" not in page.url  # the token leaves the address bar
        shown_first = page.text_content("#responses .response:nth-child(1) .text")
        page.click("#choose-a")
        expect(page.locator("#prompt")).to_have_text("second prompt")
        shown_second = page.text_content("#responses .response:nth-child(2) .text")
        page.keyboard.press("b")
        expect(page.locator("#prompt")).to_have_text("third prompt")
        shown = [page.text_content(f"#responses .response:nth-child({i}) .text") for i in (1, 2, 3)]
        for key in ("3", "1", "2"):
            page.keyboard.press(key)
        page.keyboard.press("Enter")
        page.wait_for_selector("#task[hidden]", state="attached")
        assert "Nothing left" in page.text_content("#message")
        assert page.evaluate("window.pwned") is None
        status = browser.new_page()
        status.goto(f"{server.url}/status#token={admin}")
        expect(status.locator("#labellers tbody tr")).to_have_count(1)
        assert status.text_content("#labellers tbody tr td") == "ann"
        assert status.text_content("#batches tbody tr").replace(" ", "") == "b33"
    labels = {store.item(l.item_id).prompt: l for l in store.labels("c")}
    first, second, third = (labels[p] for p in (hostile, "second prompt", "third prompt"))
    first_item, second_item, third_item = (store.item(l.item_id) for l in (first, second, third))
    assert first_item.responses[first.ranking[0]] == shown_first  # the clicked response (A) is best
    assert second_item.responses[second.ranking[0]] == shown_second  # key b: B is best
    assert [third_item.responses[i] for i in third.ranking] == [shown[2], shown[0], shown[1]]
    assert all(l.seconds is not None and l.seconds >= 0 for l in (first, second, third))


HH_PROMPT = "".join(
    f"\n\nHuman: question {i}: " + "a long question that goes on " * 12 + f"\n\nAssistant: answer {i}: " + "a long answer " * 20
    for i in range(5)
) + "\n\nHuman: and the last question, the one to answer?\n\nAssistant:"


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    """A screenshot of the page into the test's directory, and into $RLHF_LAB_SCREENSHOT_DIR when set (the
    pictures in docs/labelling.md come from there)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    if os.environ.get("RLHF_LAB_SCREENSHOT_DIR"):
        shutil.copy(path, Path(os.environ["RLHF_LAB_SCREENSHOT_DIR"]) / path.name)
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5_000
    return path


@pytest.mark.parametrize("ask_rating", [False, True])
def test_a_long_dialogue_opens_at_its_last_turn_with_only_the_controls_the_item_needs(tmp_path, browser, ask_rating):
    from playwright.sync_api import expect

    store = LabelStore(tmp_path / "labels.db")
    campaign = Campaign(store, "c", CampaignSettings(redundancy=1, ask_rating=ask_rating))
    token = store.add_labeller("c", "ann")
    store.add_items("c", "b", [
        {"prompt": HH_PROMPT, "responses": ["a helpful answer " * 60, "an unhelpful answer " * 60]},
        {"prompt": "rank these", "responses": ["one", "two", "three"]},
    ])
    with LabelServer(campaign) as server:
        for viewport, name in (({"width": 1280, "height": 720}, "desktop"), ({"width": 375, "height": 667}, "phone")):
            page = browser.new_page(viewport=viewport)
            page.goto(f"{server.url}/#token={token}")
            page.wait_for_selector("#task:not([hidden])")
            # A pair: the pair's answers, no ranking controls; the rating only where the campaign asks for it.
            assert page.is_visible("#choose-a") and page.is_visible("#choose-tie")
            assert not page.is_visible("#submit-ranking") and not page.is_visible("#reset-ranking") and not page.is_visible("#rank-skip")
            assert page.is_visible("#rating") == ask_rating
            # The turn the responses answer is on screen; the five earlier exchanges are folded above it.
            assert page.text_content("#last-turn") == "Humanand the last question, the one to answer?"
            assert page.is_visible("#last-turn") and _in_view(page, "#last-turn", viewport)
            assert page.text_content("#earlier-turns summary") == "10 earlier turns of the conversation"
            assert not page.is_visible("#earlier-turns .turn")
            # The answer buttons are on screen without scrolling, at phone width too.
            for button in ("#choose-a", "#choose-b"):
                assert _in_view(page, button, viewport), (name, button, page.locator(button).bounding_box())
            if not ask_rating:
                _screenshot(page, tmp_path, f"labelling_{name}")
            page.click("#earlier-turns summary")
            expect(page.locator("#earlier-turns .turn").first).to_be_visible()
            assert page.text_content("#earlier-turns .turn") .startswith("Humanquestion 0:")
            page.close()
        page = browser.new_page()
        page.goto(f"{server.url}/#token={token}")
        page.click("#choose-b")
        expect(page.locator("#prompt")).to_have_text("rank these")  # a plain prompt stays plain text
        assert page.is_visible("#submit-ranking") and not page.is_visible("#choose-a") and not page.is_visible("#choose-tie")
    (label,) = [l for l in store.labels("c")]
    assert (label.rating is None) and len(label.ranking) == 2


def _in_view(page, selector: str, viewport: dict) -> bool:
    box = page.locator(selector).bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"] and box["x"] + box["width"] <= viewport["width"] + 1
