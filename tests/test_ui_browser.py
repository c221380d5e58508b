"""The audit UI in a real browser: Debian's Chromium driven by PyPI's playwright.

Against a real worker holding tens of thousands of rows: signing in from the keyboard, every
filter and its URL round trip, the histogram narrowing the range, the detail panel and its
permalink, keyboard-only use (`/`, `j`/`k`, Enter, Esc), saved filters kept by the browser,
the live tail with pause, an exported file that `sealtrail verify --rows` accepts, a paused
export resumed from its badge, the integrity panel turning to tampered and to truncated (and the browser's own
WebCrypto re-checks of a row's hash and a checkpoint's signature failing), a token of one tenant
seeing nothing of another, no Content-Security-Policy violation on any page, and axe-core
(vendored in tests/vendor, injected by the test) finding no serious or critical violation.

The browser is `/usr/bin/chromium` (scripts/setup.sh installs it); playwright never downloads
one. Without it these tests are skipped, saying so.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.test_ui import ENV, TOKEN_ACME, TOKEN_ALL, _worker_config
from tests.worker_process import ROOT, Worker, running_worker

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1.min.js"
#: The flags headless Chromium needs here (root, no GPU, nothing fetched from outside).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ROWS = 30_000
TIMEOUT_MS = 15_000

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="/usr/bin/chromium is not installed (scripts/setup.sh installs "
                              "Debian's chromium)"),
    pytest.mark.timeout(300),
]

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (requirements.lock has it)")


def _event(index: int) -> dict[str, Any]:
    tenant = ("acme", "globex", "initech")[index % 3]
    return {"event_type": ("safety.decision", "system.auth", "safety.policy_change")[index % 3
                                                                                      if index % 11
                                                                                      else 2],
            "severity": ("INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL")[index % 5],
            "tenant_id": tenant,
            "timestamp": f"2026-11-{20 + index * 3 // ROWS:02d}T{index * 72 // ROWS % 24:02d}:"
                         f"{index % 60:02d}:{index * 7 % 60:02d}Z",
            "decision": "deny" if index % 4 == 0 else "allow",
            "agent_id": f"agent-{index % 9}", "reason": f"{tenant} request {index}"}


def _fill(worker: Worker, count: int) -> None:
    with worker.client(timeout=60) as client:
        for start in range(0, count, 5_000):
            answer = client.post("/v1/events", json=[_event(index) for index in
                                                     range(start, min(count, start + 5_000))],
                                 headers={"Authorization": f"Bearer {TOKEN_ALL}"})
            assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker with 30,000 rows of three tenants, a signing key and a paused export."""
    directory = tmp_path_factory.mktemp("ui-browser")
    config = _worker_config(directory)
    config["checkpoints"]["everyRows"] = 1000
    with running_worker(directory, env=ENV, **config) as running:
        _fill(running, ROWS)
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, worker: Worker) -> Iterator[Any]:
    """A fresh browser context and page; CSP violations are collected in `page.csp`."""
    context = browser.new_context(base_url=worker.url, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    violations: list[str] = []
    opened.on("console", lambda message: violations.append(message.text)
              if "Content Security Policy" in message.text else None)
    opened.csp = violations
    yield opened
    context.close()


def sign_in(page: Any, token: str, target: str = "/ui/events") -> None:
    """Sign in from the keyboard alone: the token field has focus, Enter submits."""
    page.goto(target)
    assert "/ui/signin" in page.url
    page.wait_for_function("document.activeElement && document.activeElement.id === 'token'")
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: urlsplit(url).path == target.split("?", maxsplit=1)[0])


def shown(page: Any) -> list[dict[str, str]]:
    """The rows of the list as the page shows them."""
    return page.eval_on_selector_all("#rows tr", """rows => rows.map(row => ({
        seq: row.dataset.seq, tenant: row.children[2].textContent,
        type: row.children[3].textContent, severity: row.children[4].textContent,
        decision: row.children[5].textContent, actor: row.children[6].textContent,
        summary: row.children[7].textContent, time: row.children[1].textContent}))""")


def axe(page: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the page as it is now."""
    page.evaluate(AXE.read_text(encoding="utf-8"))  # evaluated by the driver: no CSP applies
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [{"id": item["id"], "impact": item["impact"],
             "nodes": [node["target"] for node in item["nodes"]][:5]}
            for item in result["violations"] if item["impact"] in ("serious", "critical")]


def test_filters_apply_on_the_server_and_round_trip_through_the_url(page: Any) -> None:
    sign_in(page, TOKEN_ALL)
    assert len(shown(page)) == 50
    page.select_option("#f-severity", ["HIGH", "CRITICAL"])
    page.select_option("#f-decision", "deny")
    page.select_option("#f-tenant", "globex")
    page.fill("#f-actor", "agent-4")
    page.fill("#f-type", "system.auth")
    page.fill("#f-from", "2026-11-20T00:00")
    page.fill("#f-to", "2026-11-22T00:00")
    page.fill("#f-q", "request")
    page.click("button[type=submit]:has-text('Apply')")
    page.wait_for_url(re.compile(r"severity=HIGH"))
    url = page.url
    for part in ("severity=HIGH", "severity=CRITICAL", "decision=deny", "tenant=globex",
                 "actor=agent-4", "type=system.auth", "q=request", "from=2026-11-20T00",
                 "to=2026-11-22T00"):
        assert part in url, part
    rows = shown(page)
    assert rows
    for row in rows:
        assert row["severity"] in ("HIGH", "CRITICAL")
        assert (row["decision"], row["tenant"], row["actor"], row["type"]) == (
            "deny", "globex", "agent-4", "system.auth")
        assert "2026-11-20" <= row["time"] < "2026-11-22"
    page.reload()
    assert page.eval_on_selector("#f-severity", "s => [...s.selectedOptions].map(o => o.value)"
                                 ) == ["CRITICAL", "HIGH"]
    assert page.input_value("#f-actor") == "agent-4"
    assert page.input_value("#f-tenant") == "globex"
    assert [row["seq"] for row in shown(page)] == [row["seq"] for row in rows]
    page.select_option("#f-range", "24h")
    page.fill("#f-from", "")
    page.fill("#f-to", "")
    page.click("button[type=submit]:has-text('Apply')")
    page.wait_for_url(re.compile(r"range=24h"))
    assert shown(page) == []  # every row is stamped 2026-11-20..22, long before "now"
    assert page.csp == []


def test_a_histogram_bar_narrows_the_range(page: Any) -> None:
    sign_in(page, TOKEN_ALL, "/ui/events?tenant=acme")
    bars = page.locator("#timeline a.bar")
    bars.first.wait_for()
    assert "events, 2026-11-20" in page.inner_text("#timeline figcaption")
    labels = bars.evaluate_all("bars => bars.map(bar => bar.getAttribute('aria-label'))")
    busy = next(index for index, label in enumerate(labels) if not label.startswith("0 "))
    count = int(labels[busy].split()[0])
    bars.nth(busy).click()
    page.wait_for_url(re.compile(r"from=.*to="))
    assert "tenant=acme" in page.url
    rows = shown(page)
    assert rows
    assert len(rows) == min(count, 50)
    start = page.input_value("#f-from")
    end = page.input_value("#f-to")
    for row in rows:
        stamp = row["time"].replace(" ", "T")
        assert start <= stamp[:19] < end or stamp[:19] == end
    assert page.csp == []


def test_keyboard_only_search_detail_permalink_and_escape(page: Any) -> None:
    sign_in(page, TOKEN_ALL)
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "f-q"
    page.keyboard.type("request 2999")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"q=request"))
    rows = shown(page)
    assert [row["summary"].strip() for row in rows][-1].endswith("request 2999")
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("k")
    focused = page.evaluate("document.activeElement.closest('tr').dataset.seq")
    assert focused == rows[0]["seq"]
    page.keyboard.press("Enter")
    detail = page.locator("#detail article")
    detail.wait_for()
    text = detail.inner_text()
    for label in ("Chain position", "prev_hash", "record_hash", "store_id", "tenant_seq",
                  "The row exactly as stored", "Delivery", "siem:"):
        assert label in text, label
    assert page.evaluate("document.activeElement.id") == "detail-article"
    # 127.0.0.1 is a secure context: the browser recomputed the row's hash itself
    page.locator("#browser-check.good", has_text="hashes to its record_hash").wait_for()
    page.keyboard.press("Escape")
    assert page.locator("#detail article").count() == 0
    assert page.evaluate("document.activeElement.closest('tr').dataset.seq") == rows[0]["seq"]
    page.keyboard.press("Enter")
    page.locator("#detail article").wait_for()
    page.keyboard.press("Tab")  # from the panel to its first link: the permalink
    assert page.evaluate("document.activeElement.className") == "permalink"
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/ui/t/[a-z]+/e/[0-9]+$"))
    assert page.locator("h1").inner_text().startswith("Event ")
    page.locator("a[rel=prev]").click()
    page.wait_for_url(re.compile(r"/ui/t/[a-z]+/e/[0-9]+$"))
    assert page.csp == []


def test_older_pages_follow_the_keyset(page: Any) -> None:
    sign_in(page, TOKEN_ALL, "/ui/events?tenant=initech")
    seen: list[int] = []
    for _ in range(3):
        seen += [int(row["seq"]) for row in shown(page)]
        page.click("#older")
        page.wait_for_url(re.compile(r"before="))
    assert seen == sorted(seen, reverse=True)
    assert len(set(seen)) == 150


def test_saved_filters_live_in_the_browser_as_links(page: Any) -> None:
    sign_in(page, TOKEN_ALL, "/ui/events?decision=deny&severity=LOW")
    page.on("dialog", lambda dialog: dialog.accept("my denied lows"))
    page.click("#save-filter")
    saved = page.locator("#saved-list li.own a", has_text="my denied lows")
    saved.wait_for()
    page.goto("/ui/events")
    page.locator("#saved-list li.own a", has_text="my denied lows").click()
    page.wait_for_url(re.compile(r"decision=deny"))
    assert {row["severity"] for row in shown(page)} == {"LOW"}
    page.locator("#saved-list a", has_text="Denied decisions, last 24 h").click()
    page.wait_for_url(re.compile(r"range=24h"))


def test_the_live_tail_appends_and_pauses(page: Any, worker: Worker) -> None:
    sign_in(page, TOKEN_ACME)
    page.click("#tail-toggle")
    page.locator("#tail-state", has_text="following").wait_for()

    def send(reason: str, tenant: str = "acme") -> None:
        answer = httpx.post(f"{worker.url}/v1/events", json={
            "event_type": "safety.violation", "severity": "CRITICAL", "tenant_id": tenant,
            "reason": reason}, headers={"Authorization": f"Bearer {TOKEN_ALL}"}, timeout=10)
        assert answer.status_code == 200

    send("tail other tenant", "globex")
    send("tail first")
    page.locator("#rows tr:first-child", has_text="tail first").wait_for()
    page.click("#tail-toggle")  # pause
    send("tail while paused")
    page.locator("#tail-state", has_text="1 new").wait_for()
    assert page.locator("#rows", has_text="tail while paused").count() == 0
    page.click("#tail-toggle")  # resume: the held row arrives
    page.locator("#rows tr:first-child", has_text="tail while paused").wait_for()
    assert page.locator("#rows", has_text="tail other tenant").count() == 0


def test_an_exported_file_passes_sealtrail_verify(page: Any, worker: Worker,
                                                  tmp_path: Path) -> None:
    sign_in(page, TOKEN_ALL, "/ui/events?tenant=globex")
    with page.expect_download() as download:
        page.click("a:has-text('NDJSON')")
    name = download.value.suggested_filename
    assert re.fullmatch(r"sealtrail-globex-[0-9]{8}T[0-9]{6}Z\.ndjson", name)
    saved = tmp_path / name
    download.value.save_as(saved)
    assert len(saved.read_bytes().splitlines()) >= ROWS // 3
    verdict = subprocess.run(
        [sys.executable, "-m", "sealtrail", "verify", "--rows", str(saved), "--pubkey",
         str(worker.config_path.parent / "signing.key.pub")],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PYTHONPATH": str(ROOT / "operator")})
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert verdict.stdout.startswith("intact")


def test_a_paused_export_is_resumed_from_its_badge(page: Any) -> None:
    sign_in(page, TOKEN_ALL)
    badge = page.locator(".badges a[data-export=siem]")
    assert "paused" in badge.inner_text()
    badge.click()
    page.wait_for_url(re.compile(r"/ui/deliveries"))
    page.click("button:has-text('Resume siem')")
    page.wait_for_url(re.compile(r"done=siem"))
    assert "Resumed siem." in page.inner_text("main")
    assert "paused" not in page.locator(".badges a[data-export=siem]").inner_text()


def test_one_tenants_token_sees_only_that_tenant(page: Any) -> None:
    sign_in(page, TOKEN_ACME)
    options = page.eval_on_selector_all("#f-tenant option", "os => os.map(o => o.value)")
    assert options == ["", "acme"]
    assert {row["tenant"] for row in shown(page)} == {"acme"}
    page.goto("/ui/events?tenant=globex")
    assert shown(page) == []
    page.goto("/ui/integrity")
    assert page.locator("tr[data-tenant]").evaluate_all(
        "rows => rows.map(row => row.dataset.tenant)") == ["acme"]
    assert "globex" not in page.content()


def test_the_integrity_panel_shows_tampering(browser: Any, tmp_path: Path) -> None:
    directory = tmp_path / "w"
    with running_worker(directory, env=ENV, **_worker_config(directory)) as small:
        _fill(small, 600)
        context = browser.new_context(base_url=small.url)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        sign_in(page, TOKEN_ALL, "/ui/integrity")
        page.click("button:has-text('Check all my tenants now')")
        page.locator("tr[data-tenant=acme] .verdict", has_text="intact").wait_for()
        page.locator("tr[data-tenant=globex] .verdict", has_text="intact").wait_for()
        store = sqlite3.connect(small.db)
        store.execute("UPDATE audit_rows SET body = replace(body, 'request 3', 'request 4') "
                      "WHERE tenant_id = 'acme' AND tenant_seq = 2")
        # globex rolled back: its tail and the checkpoints that vouched for it gone
        store.execute("DELETE FROM audit_checkpoints WHERE tenant_id = 'globex' AND "
                      "tenant_seq > 40")
        store.execute("DELETE FROM audit_rows WHERE tenant_id = 'globex' AND tenant_seq > 50")
        store.commit()
        store.close()
        page.click("button:has-text('Check globex')")
        page.locator("tr[data-tenant=globex] .verdict", has_text="truncated").wait_for()
        page.click("button:has-text('Check acme')")
        verdict = page.locator("tr[data-tenant=acme] .verdict")
        verdict.filter(has_text="tampered").wait_for()
        assert verdict.get_attribute("role") == "alert"
        page.locator("tr[data-tenant=acme] a", has_text="Review the affected range").click()
        page.wait_for_url(re.compile(r"seq_from="))
        assert shown(page)
        page.goto("/ui/t/acme/e/2")  # the row changed in place: this browser sees it too
        page.locator("#browser-check.bad", has_text="NOT to its record_hash").wait_for()
        page.goto("/ui/t/acme/e/3")
        page.locator("#browser-check.good").wait_for()
        # a checkpoint row: its signature re-checked by this browser, then again once altered
        store = sqlite3.connect(small.db)
        (checkpoint,) = store.execute(
            "SELECT tenant_seq FROM audit_rows WHERE tenant_id = 'initech' AND event_type = "
            "'sealtrail.checkpoint' ORDER BY seq LIMIT 1").fetchone()
        page.goto(f"/ui/t/initech/e/{checkpoint}")
        page.locator("#signature-check.good", has_text="verifies").wait_for()
        store.execute("UPDATE audit_rows SET body = replace(body, 'checkpoint_signed_at\":\"2',"
                      " 'checkpoint_signed_at\":\"3') WHERE tenant_id = 'initech' AND "
                      "tenant_seq = ?", (checkpoint,))
        store.commit()
        store.close()
        page.goto(f"/ui/t/initech/e/{checkpoint}")
        page.locator("#signature-check.bad", has_text="does NOT verify").wait_for()
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("path", ["/ui/events?tenant=acme", "/ui/integrity", "/ui/deliveries",
                                  "/ui/t/acme/e/5"])
def test_axe_finds_no_serious_violation(page: Any, path: str, scheme: str) -> None:
    page.emulate_media(color_scheme=scheme)
    sign_in(page, TOKEN_ALL, path)
    if path.startswith("/ui/events"):
        page.locator("#timeline svg").wait_for()
        page.locator("#rows a.open").first.click()
        page.locator("#detail article").wait_for()
    assert axe(page) == []
    assert page.csp == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_sign_in_page_is_accessible(browser: Any, worker: Worker, scheme: str) -> None:
    context = browser.new_context(base_url=worker.url, color_scheme=scheme)
    page = context.new_page()
    page.goto("/ui/signin")
    assert axe(page) == []
    context.close()


def test_chromium_is_debians(browser: Any) -> None:
    """The browser under test is the system's, not one playwright fetched."""
    assert shutil.which("chromium") == str(CHROMIUM)
    assert re.match(r"1[0-9]{2}\.", browser.version)
