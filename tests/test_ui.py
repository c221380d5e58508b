"""The audit UI (`/ui`) of a real worker process, driven over HTTP as a browser would.

Covers: sign-in with an ingest token (a server-side session id in an HttpOnly, SameSite=Strict
cookie, never the token), CSRF refusal on every POST, the Content-Security-Policy, a token
bound to one tenant never seeing another's rows (list, permalink, export, histogram, tail),
every filter and its URL round trip, keyset paging through all rows, the detail panel (every
field, the stored bytes, chain position, delivery, neighbours), exports (NDJSON that
`sealtrail verify --rows` accepts, JSON, RFC 4180 CSV), the integrity panel turning to tampered
and to truncated, resuming a paused export, the live tail, and the UI's own events in the
`_system` chain. Browser tests (Chromium) are in test_ui_browser.py.
"""

from __future__ import annotations

import contextlib
import csv
import html
import io
import re
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
from markupsafe import escape

from sealtrail.api.event import Event
from sealtrail.chain.keys import generate_keypair
from sealtrail.chain.query import SEARCH_INDEXES
from sealtrail.chain.store import ChainStore, CheckpointPolicy
from tests.test_handoff import tls_collector
from tests.worker_process import ROOT, Worker, free_port, running_worker, start_worker

TOKEN_ACME = "ui-acme-Zq7v1pXk2rT9bW3m"  # noqa: S105 - a test token
TOKEN_GLOBEX = "ui-globex-Hn4s8LdQ0cYe6uJa"  # noqa: S105 - a test token
TOKEN_ALL = "ui-all-Rk2pW9xVb4Tn7cQe"  # noqa: S105 - a test token, bound to no tenant
ENV = {"UI_T_ACME": TOKEN_ACME, "UI_T_GLOBEX": TOKEN_GLOBEX, "UI_T_ALL": TOKEN_ALL}
TOKENS = [
    {"token": {"env": "UI_T_ACME"}, "tenants": ["acme"]},
    {"token": {"env": "UI_T_GLOBEX"}, "tenants": ["globex"]},
    {"token": {"env": "UI_T_ALL"}},
]
ROWS_PER_TENANT = 130
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _events(count: int) -> list[dict[str, Any]]:
    """Events of two tenants with known fields (so every filter's answer can be computed)."""
    events = []
    for index in range(count):
        tenant = "acme" if index % 2 == 0 else "globex"
        events.append({
            "event_type": "safety.policy_change" if index % 7 == 0 else "safety.decision",
            "severity": ["INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL"][index % 5],
            "tenant_id": tenant, "timestamp": f"2026-11-22T10:{index // 60 % 60:02d}:"
                                              f"{index % 60:02d}Z",
            "decision": "deny" if index % 3 == 0 else "allow",
            "agent_id": f"agent-{index % 4}", "reason": f"{tenant} reason number {index}"})
    return events


def _worker_config(directory: Path, *, paused: bool = True) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "signing.key"
    if not key.exists():
        generate_keypair(key)
    secret = directory / "webhook-secret"
    secret.write_text("whsec_c2VhbHRyYWlsLXVpLXRlc3Qtc2VjcmV0\n", encoding="utf-8")
    return {"ingest": {"tokens": TOKENS},
            "checkpoints": {"signingKey": {"file": str(key)}, "everyRows": 40,
                            "everySeconds": 3600},
            "exports": [{"name": "siem", "paused": paused,
                         "webhook": {"url": "http://127.0.0.1:9/hook",
                                     "secret": {"file": str(secret)}},
                         "retry": {"initialBackoffMs": 50, "maxBackoffMs": 1000}}]}


def _fill(worker: Worker, events: list[dict[str, Any]]) -> None:
    with worker.client() as client:
        for start in range(0, len(events), 100):
            answer = client.post("/v1/events", json=events[start:start + 100],
                                 headers={"Authorization": f"Bearer {TOKEN_ALL}"})
            assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker with three tokens, a signing key, a paused export and 260 events."""
    directory = tmp_path_factory.mktemp("ui-worker")
    with running_worker(directory, env=ENV, **_worker_config(directory)) as running:
        _fill(running, _events(2 * ROWS_PER_TENANT))
        yield running


@contextlib.contextmanager
def sign_in(worker: Worker, token: str) -> Iterator[httpx.Client]:
    """A client signed in with `token`, closed afterwards."""
    with worker.client(follow_redirects=False) as client:
        form = client.get("/ui/signin")
        csrf = CSRF.search(form.text)
        assert csrf is not None
        answer = client.post("/ui/signin", data={"csrf": csrf.group(1), "token": token,
                                                 "next": "/ui/events"})
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/ui/events"
        yield client


def csrf_of(client: httpx.Client) -> str:
    found = CSRF.search(client.get("/ui/events").text)
    assert found is not None
    return found.group(1)


def ndjson(client: httpx.Client, query: str) -> list[dict[str, Any]]:
    answer = client.get(f"/ui/export.ndjson?{query}")
    assert answer.status_code == 200, answer.text
    return [orjson.loads(line) for line in answer.content.splitlines()]


def stored(worker: Worker) -> list[dict[str, Any]]:
    return [row for row in worker.rows() if row["tenant_id"] != "_system"
            and not row["event_type"].startswith("sealtrail.")]


# -- sessions, CSRF, headers ---------------------------------------------------------------------


def test_a_page_asks_for_sign_in_and_a_wrong_token_gets_nothing(worker: Worker) -> None:
    with worker.client(follow_redirects=False) as client:
        answer = client.get("/ui/events?severity=HIGH")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/signin?next=/ui/events%3Fseverity%3DHIGH"
        assert client.get("/ui/export.ndjson").status_code == 401
        assert client.get("/ui/tail").status_code == 401
        for target in ("/ui/events%0d%0aSet-Cookie:%20x=y", "//elsewhere.example/ui/",
                       "https://elsewhere.example/ui/"):
            form = client.get(f"/ui/signin?next={target}")
            assert 'name="next" value="/ui/events"' in form.text, target
        csrf = CSRF.search(form.text)
        assert csrf is not None
        refused = client.post("/ui/signin", data={"csrf": csrf.group(1), "token": "nope"})
        assert refused.status_code == 401
        assert "not one this worker accepts" in refused.text
        assert client.get("/ui/events").status_code == 303  # still not signed in


def test_the_cookie_holds_a_session_id_never_the_token(worker: Worker) -> None:
    with worker.client(follow_redirects=False) as client:
        before = client.get("/ui/signin").headers["set-cookie"]
        csrf = CSRF.search(client.get("/ui/signin").text)
        assert csrf is not None
        answer = client.post("/ui/signin", data={"csrf": csrf.group(1), "token": TOKEN_ACME})
        cookie = answer.headers["set-cookie"]
        assert TOKEN_ACME not in cookie
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in attributes
        assert "samesite=strict" in attributes
        assert "path=/ui" in attributes
        assert "secure" not in attributes  # plain HTTP here: a Secure cookie would never return
        assert cookie.split(";")[0] != before.split(";")[0]  # a new id at sign-in (fixation)
        assert client.get("/ui/events").status_code == 200


def test_every_page_has_a_strict_content_security_policy(worker: Worker) -> None:
    with sign_in(worker, TOKEN_ALL) as client:
        for path in ("/ui/events", "/ui/integrity", "/ui/deliveries", "/ui/t/acme/e/1",
                     "/ui/histogram", "/ui/signin"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            policy = answer.headers["content-security-policy"]
            assert "script-src 'self';" in policy
            assert "default-src 'none'" in policy
            assert "unsafe-inline" not in policy
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert "<script>" not in answer.text
            assert " style=" not in answer.text
            assert " on" + "click=" not in answer.text


def test_every_post_wants_the_sessions_csrf_token(worker: Worker) -> None:
    with worker.client(follow_redirects=False) as client:
        client.get("/ui/signin")
        assert client.post("/ui/signin", data={"token": TOKEN_ALL}).status_code == 403
        assert client.post("/ui/signin", data={"token": TOKEN_ALL,
                                               "csrf": "forged"}).status_code == 403
    with sign_in(worker, TOKEN_ALL) as client:
        for path in ("/ui/integrity", "/ui/exports/siem/resume", "/ui/signout"):
            assert client.post(path, data={}).status_code == 403, path
            assert client.post(path, data={"csrf": "x" * 43}).status_code == 403, path
        assert client.get("/ui/events").status_code == 200  # still signed in


def test_sign_out_ends_the_session(worker: Worker) -> None:
    with sign_in(worker, TOKEN_ACME) as client:
        assert client.post("/ui/signout", data={"csrf": csrf_of(client)}).status_code == 303
        assert client.get("/ui/events").status_code == 303


# -- tenants -------------------------------------------------------------------------------------


def test_a_token_of_one_tenant_never_sees_another(worker: Worker) -> None:
    globex = [row for row in stored(worker) if row["tenant_id"] == "globex"]
    with sign_in(worker, TOKEN_ACME) as client:
        page = client.get("/ui/events").text
        assert "globex" not in page
        assert client.get("/ui/events?tenant=globex").text.count("<tr data-seq") == 0
        assert client.get("/ui/t/globex/e/1").status_code == 404
        assert client.get("/ui/t/globex/e/1?fragment=1").status_code == 404
        rows = ndjson(client, "")
        assert rows
        assert {row["tenant_id"] for row in rows} == {"acme"}
        assert not ndjson(client, "tenant=globex")
        assert not ndjson(client, "q=globex")
        text = client.get("/ui/export.csv?q=reason").text
        assert "globex" not in text
        histogram = client.get("/ui/histogram").text
        assert int(re.search(r"([0-9]+) events,", histogram).group(1)) == len(  # type: ignore[union-attr]
            [row for row in worker.rows() if row["tenant_id"] == "acme"])
        # the _system chain (the UI's own events) is not acme's either
        assert client.get("/ui/t/_system/e/1").status_code == 404
        integrity = client.get("/ui/integrity").text
        assert "globex" not in integrity
        assert "_system" not in integrity
        for row in globex[:3]:
            assert row["record_hash"] not in page


def test_the_timeline_counts_every_row_even_one_stamped_in_the_future(worker: Worker) -> None:
    _fill(worker, [{"event_type": "safety.decision", "severity": "LOW", "tenant_id": "initech",
                    "timestamp": "2031-01-01T00:00:00Z", "reason": "from a skewed clock"},
                   {"event_type": "safety.decision", "severity": "LOW", "tenant_id": "initech",
                    "timestamp": "2001-01-01T00:00:00Z", "reason": "from a skewed clock"}])
    with sign_in(worker, TOKEN_ALL) as client:
        histogram = client.get("/ui/histogram?tenant=initech").text
    found = re.search(r"([0-9]+) events, 2001-01-01 00:00 to 2031-01-01 00:0", histogram)
    assert found is not None, histogram[-600:]
    assert int(found.group(1)) == len([row for row in worker.rows()
                                       if row["tenant_id"] == "initech"])


# -- filters and paging --------------------------------------------------------------------------


FILTERS = [
    ("severity=HIGH", lambda row: row["severity"] == "HIGH"),
    ("severity=HIGH&severity=CRITICAL", lambda row: row["severity"] in ("HIGH", "CRITICAL")),
    ("decision=deny", lambda row: row.get("decision") == "deny"),
    ("type=safety.policy_change", lambda row: row["event_type"] == "safety.policy_change"),
    ("actor=agent-2", lambda row: row.get("agent_id") == "agent-2"),
    ("q=number+12", lambda row: "number 12" in row.get("reason", "")),
    ("tenant=globex", lambda row: row["tenant_id"] == "globex"),
    ("from=2026-11-22T10:01&to=2026-11-22T10:02",
     lambda row: "2026-11-22T10:01" <= row["timestamp"] < "2026-11-22T10:02"),
    ("decision=deny&severity=INFO&tenant=acme",
     lambda row: row.get("decision") == "deny" and row["severity"] == "INFO"
     and row["tenant_id"] == "acme"),
]


@pytest.mark.parametrize(("query", "keep"), FILTERS, ids=[item[0] for item in FILTERS])
def test_each_filter_runs_on_the_server_over_all_rows(worker: Worker, query: str,
                                                      keep: Any) -> None:
    expected = [row["seq"] for row in stored(worker) if keep(row)]
    assert expected
    with sign_in(worker, TOKEN_ALL) as client:
        everything = [row["seq"] for row in ndjson(client, query)]  # checkpoints too
        got = [row["seq"] for row in ndjson(client, query)
               if not row["event_type"].startswith(("sealtrail.", "audit_ui."))]
        assert got == expected
        page = client.get(f"/ui/events?{query}")
        assert page.status_code == 200
        shown = [int(seq) for seq in re.findall(r'<tr data-seq="([0-9]+)"', page.text)]
        assert shown == sorted(everything, reverse=True)[:50]
        # the filter comes back in every link (the URL is the state) and in the form
        link = re.search(r'href="/ui/export\.ndjson\?([^"]*)"', page.text)
        assert link is not None
        assert sorted(parse_qsl(html.unescape(link.group(1)))) == sorted(parse_qsl(query))
        for key, value in parse_qsl(query):
            if key in ("actor", "q", "from", "to"):
                assert f'value="{value}"' in page.text
            elif key in ("severity", "decision", "tenant"):
                assert re.search(rf'<option( value="{value}")? selected>{value}<', page.text)


def test_a_malformed_filter_is_named_on_the_page_not_a_failure(worker: Worker) -> None:
    with sign_in(worker, TOKEN_ALL) as client:
        page = client.get("/ui/events?severity=LOUD&from=yesterday&range=forever")
        assert page.status_code == 200
        assert "severity: &#39;LOUD&#39; is not one of" in page.text
        assert "from: &#39;yesterday&#39; is not a UTC date" in page.text
        assert "range: &#39;forever&#39;" in page.text


def test_keyset_paging_reaches_every_row_once(worker: Worker) -> None:
    expected = [row["seq"] for row in worker.rows() if row["tenant_id"] == "acme"]
    seen: list[int] = []
    with sign_in(worker, TOKEN_ACME) as client:
        url = "/ui/events"
        for _ in range(20):
            page = client.get(url).text
            seen += [int(seq) for seq in re.findall(r'<tr data-seq="([0-9]+)"', page)]
            older = re.search(r'<a href="(/ui/events\?[^"]*before=[0-9]+)" id="older">', page)
            if older is None:
                break
            url = html.unescape(older.group(1))
    assert seen == sorted(expected, reverse=True)


def test_a_range_preset_counts_from_now(worker: Worker) -> None:
    with sign_in(worker, TOKEN_ALL) as client:
        # the test rows are stamped 2026-11-22 (one in 2031: a preset is open towards the
        # future, so a skewed clock's rows still show); the UI's own events are stamped now
        recent = ndjson(client, "range=1h")
        assert recent
        assert all(row["event_type"].startswith(("audit_ui.", "sealtrail."))
                   or row["timestamp"] > "2030" for row in recent)
        assert not [row for row in recent if row["timestamp"] < "2026-11-23"]


# -- detail --------------------------------------------------------------------------------------


def test_the_detail_shows_every_field_the_stored_row_and_its_chain(worker: Worker) -> None:
    rows = [row for row in worker.rows() if row["tenant_id"] == "acme"]
    row = rows[4]
    raw = sqlite3.connect(f"file:{worker.db}?mode=ro", uri=True).execute(
        "SELECT body FROM audit_rows WHERE seq = ?", (row["seq"],)).fetchone()[0]
    with sign_in(worker, TOKEN_ACME) as client:
        for path in (f"/ui/t/acme/e/{row['tenant_seq']}",
                     f"/ui/t/acme/e/{row['tenant_seq']}?fragment=1"):
            page = client.get(path)
            assert page.status_code == 200
            assert str(escape(bytes(raw).decode())) in page.text
            for key, value in row.items():
                assert f"<dt>{key}</dt>" in page.text
                if isinstance(value, str):
                    assert str(escape(value)) in page.text
            assert f"<dt>seq</dt><dd>{row['seq']}</dd>" in page.text
            assert f"<dt>tenant_seq</dt><dd>{row['tenant_seq']}</dd>" in page.text
            assert row["prev_hash"] in page.text
            assert row["store_id"] in page.text
            assert f'href="/ui/t/acme/e/{row["tenant_seq"] - 1}" rel="prev"' in page.text
            assert f'href="/ui/t/acme/e/{row["tenant_seq"] + 1}" rel="next"' in page.text
            assert (f'href="/ui/events?tenant=acme&amp;actor={row["agent_id"]}">events by '
                    f'{row["agent_id"]}</a>') in page.text
            # the export is paused from the start: nothing is delivered
            assert 'data-export="siem">siem: not yet delivered (cursor at seq 0)' in page.text
        first = client.get("/ui/t/acme/e/1").text
        assert 'rel="prev"' not in first
        assert client.get("/ui/t/acme/e/999999").status_code == 404


# -- exports -------------------------------------------------------------------------------------


def test_an_ndjson_export_is_the_stored_rows_and_verify_accepts_it(worker: Worker,
                                                                  tmp_path: Path) -> None:
    with sign_in(worker, TOKEN_ACME) as client:
        answer = client.get("/ui/export.ndjson?tenant=acme")
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    name = re.search(r'filename="([^"]+)"', answer.headers["content-disposition"])
    assert name is not None
    assert re.fullmatch(r"sealtrail-acme-[0-9]{8}T[0-9]{6}Z\.ndjson", name.group(1))
    reader = sqlite3.connect(f"file:{worker.db}?mode=ro", uri=True)
    expected = b"".join(bytes(body) + b"\n" for (body,) in reader.execute(
        "SELECT body FROM audit_rows WHERE tenant_id = 'acme' ORDER BY seq"))
    assert answer.content == expected
    exported = tmp_path / name.group(1)
    exported.write_bytes(answer.content)
    verdict = subprocess.run(
        [sys.executable, "-m", "sealtrail", "verify", "--rows", str(exported), "--pubkey",
         str(worker.config_path.parent / "signing.key.pub")],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PYTHONPATH": str(ROOT / "operator")})
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert "intact" in verdict.stdout
    assert "0 signed checkpoints" not in verdict.stdout


def test_json_and_csv_exports_carry_seq_and_hashes(worker: Worker) -> None:
    with sign_in(worker, TOKEN_ALL) as client:
        as_json = client.get("/ui/export.json?decision=deny&tenant=globex")
        as_csv = client.get("/ui/export.csv?decision=deny&tenant=globex")
    assert 'filename="sealtrail-globex_deny-' in as_json.headers["content-disposition"]
    rows = orjson.loads(as_json.content)
    expected = [row for row in stored(worker) if row["tenant_id"] == "globex"
                and row.get("decision") == "deny"]
    assert rows == expected
    assert as_csv.content.count(b"\r\n") == len(expected) + 1  # RFC 4180 line ends
    table = list(csv.DictReader(io.StringIO(as_csv.text, newline="")))
    assert [int(item["seq"]) for item in table] == [row["seq"] for row in expected]
    for item, row in zip(table, expected, strict=True):
        assert item["record_hash"] == row["record_hash"]
        assert item["prev_hash"] == row["prev_hash"]
        assert orjson.loads(item["row"]) == row  # the stored row, quoted (it holds commas)


# -- integrity -----------------------------------------------------------------------------------


def _verdict(client: httpx.Client, tenant: str) -> str:
    answer = client.post("/ui/integrity", data={"csrf": csrf_of(client), "tenant": tenant})
    assert answer.status_code == 303
    deadline = time.monotonic() + 30
    while True:  # the check runs apart from the request; the page reloads until it is done
        page = client.get("/ui/integrity").text
        row = re.search(rf'<tr data-tenant="{tenant}">(.*?)</tr>', page, re.DOTALL)
        assert row is not None
        found = re.search(r'class="verdict v-([a-z]+)"', row.group(1))
        assert found is not None, row.group(1)
        if found.group(1) != "checking" or time.monotonic() > deadline:
            return found.group(1) + " " + row.group(1)
        assert '<meta http-equiv="refresh" content="2">' in page
        time.sleep(0.05)


def test_the_integrity_panel_turns_tampered_and_truncated(tmp_path: Path) -> None:
    with running_worker(tmp_path / "w", env=ENV, **_worker_config(tmp_path / "w")) as worker:
        _fill(worker, _events(200))
        with sign_in(worker, TOKEN_ALL) as client:
            intact = _verdict(client, "acme")
            assert intact.startswith("intact"), intact
            assert "key <code>" in intact
            assert re.search(r"by the server, asked by ui-session:[0-9a-f]{12}", intact)
            # 100 events and their checkpoint rows, every one of them checked
            checked = re.search(r"([0-9]+) rows, tenant_seq 1\.\.([0-9]+)", intact)
            assert checked is not None
            assert int(checked.group(1)) == int(checked.group(2)) > 100
            assert _verdict(client, "globex").startswith("intact")
            # checked again, unchanged: still intact (the checkpoint remembered from the first
            # check is held against the chain, and the chain agrees with it)
            assert _verdict(client, "globex").startswith("intact")
            # tampered: one row of acme rewritten in place
            writer = sqlite3.connect(worker.db)
            writer.execute("UPDATE audit_rows SET body = replace(body, 'acme reason number 10',"
                           " 'acme reason number 99') WHERE tenant_id = 'acme' AND "
                           "tenant_seq = 6")
            writer.commit()
            tampered = _verdict(client, "acme")
            assert tampered.startswith("tampered"), tampered
            link = re.search(r'href="/ui/events\?tenant=acme&amp;seq_from=([0-9]+)"', tampered)
            assert link is not None
            # each event's detail says what the check means for it
            assert "this row is in the affected range (from #6)" in client.get(
                "/ui/t/acme/e/9").text
            assert "the rows before it, this one included, check out" in client.get(
                "/ui/t/acme/e/3").text
            assert "intact through" in client.get("/ui/t/globex/e/3").text
            # a row made into something that is not a row is still shown, never a 500
            writer.execute("UPDATE audit_rows SET body = CAST('not json' AS BLOB) WHERE "
                           "tenant_id = 'acme' AND tenant_seq = 7")
            writer.commit()
            assert client.get("/ui/events?tenant=acme").status_code == 200
            detail = client.get("/ui/t/acme/e/7")
            assert detail.status_code == 200
            assert "(not a row)" in detail.text
            assert "not json" in detail.text
            assert client.get("/ui/export.csv?tenant=acme").status_code == 200
            # truncated: globex's tail removed, its checkpoint table rolled back with it
            writer.execute("DELETE FROM audit_checkpoints WHERE tenant_id = 'globex' AND "
                           "tenant_seq > 20")
            writer.execute("DELETE FROM audit_rows WHERE tenant_id = 'globex' AND "
                           "tenant_seq > 30")
            writer.commit()
            writer.close()
            truncated = _verdict(client, "globex")
            assert truncated.startswith("truncated"), truncated
            # found by the checkpoint an earlier check saw, which the rolled-back table lost
            assert re.search(r"chain has 30 rows but a checkpoint signed at \S+ vouches for "
                             r"[0-9]+: the tail was removed or the store rolled back",
                             truncated), truncated


# -- delivery, resume, the UI's own events ---------------------------------------------------


def test_a_paused_export_is_shown_and_resumed_by_a_token_of_no_tenant(worker: Worker) -> None:
    with sign_in(worker, TOKEN_GLOBEX) as client:
        page = client.get("/ui/deliveries").text
        assert "paused" in page
        assert "Resume siem" not in page
        refused = client.post("/ui/exports/siem/resume", data={"csrf": csrf_of(client)})
        assert refused.status_code == 403
    with sign_in(worker, TOKEN_ALL) as client:
        assert 'class="badge bad" data-export="siem"' in client.get("/ui/events").text
        assert "Resume siem" in client.get("/ui/deliveries").text
        answer = client.post("/ui/exports/siem/resume", data={"csrf": csrf_of(client)})
        assert answer.status_code == 303
        deadline = time.monotonic() + 10
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = httpx.get(f"{worker.url}/v1/status",
                               headers={"Authorization": f"Bearer {TOKEN_ALL}"}).json()
            if not status["exports"][0]["paused"]:
                break
            time.sleep(0.1)
        assert status["exports"][0]["paused"] is False
    system = [row for row in worker.rows() if row["tenant_id"] == "_system"]
    resumed = [row for row in system if row["event_type"] == "audit_ui.resume"]
    assert resumed
    assert resumed[-1]["extra"]["export"] == "siem"
    assert resumed[-1]["extra"]["tenants"] == "*"


def test_sign_ins_and_exports_are_events_in_the_system_chain(worker: Worker) -> None:
    before = worker.last_seq()
    with sign_in(worker, TOKEN_ACME) as client:
        client.get("/ui/export.csv?decision=deny")
    new = [row for row in worker.rows(after_seq=before) if row["tenant_id"] == "_system"]
    kinds = [row["event_type"] for row in new]
    assert kinds == ["audit_ui.sign_in", "audit_ui.export"]
    assert new[0]["extra"]["tenants"] == "acme"
    assert new[1]["extra"]["format"] == "csv"
    assert new[1]["extra"]["filter"] == "decision=deny"
    assert new[0]["identity"] == new[1]["identity"]
    assert TOKEN_ACME not in str(new)


# -- live tail -----------------------------------------------------------------------------------


def _read_tail_until(stream: httpx.Response, text: str, seconds: float = 15) -> str:
    """What a live tail sent until `text` came (or `seconds` passed)."""
    got = ""
    deadline = time.monotonic() + seconds
    for chunk in stream.iter_text():
        got += chunk
        if text in got or time.monotonic() > deadline:
            break
    return got


def test_the_live_tail_sends_new_rows_of_the_persons_tenants_only(worker: Worker) -> None:
    with sign_in(worker, TOKEN_ACME) as client, client.stream(
            "GET", "/ui/tail", timeout=20) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        _fill(worker, [{"event_type": "safety.violation", "severity": "HIGH",
                        "tenant_id": tenant, "reason": f"tail {tenant}"}
                       for tenant in ("globex", "acme")])
        got = _read_tail_until(stream, "tail acme")
    assert "event: row" in got
    assert "tail acme" in got
    assert "tail globex" not in got


def test_a_worker_stops_promptly_with_a_tail_and_an_export_open(tmp_path: Path) -> None:
    """Streams never end by themselves; the runner would wait for them (it waited >90 s)."""
    worker = start_worker(tmp_path / "w")
    try:
        _fill_open(worker, [{"event_type": "safety.decision", "severity": "INFO",
                             "tenant_id": "a", "reason": "x" * 2000}] * 20_000)
        outcome: dict[str, Any] = {}

        def read(path: str, key: str) -> None:
            try:
                with httpx.Client(base_url=worker.url, timeout=60) as client, client.stream(
                        "GET", path) as stream:
                    for _chunk in stream.iter_bytes():
                        time.sleep(0.02)  # a slow browser: the export is still going
                outcome[key] = "finished"
            except httpx.HTTPError as error:
                outcome[key] = type(error).__name__

        readers = [threading.Thread(target=read, args=(path, key)) for path, key in
                   (("/ui/tail", "tail"), ("/ui/export.ndjson", "export"))]
        for reader in readers:
            reader.start()
        time.sleep(1.0)
        started = time.monotonic()
        assert worker.stop(timeout=30) == 0
        assert time.monotonic() - started < 10
        for reader in readers:
            reader.join(20)
        # the export was cut, not ended as if complete: the download shows as failed
        assert outcome["export"] == "RemoteProtocolError"
        assert "an export was cut short: the worker is stopping" in worker.log()
    finally:
        worker.stop()


def _fill_open(worker: Worker, events: list[dict[str, Any]]) -> None:
    with worker.client() as client:
        for start in range(0, len(events), 5000):
            assert client.post("/v1/events", json=events[start:start + 5000]).status_code == 200


def test_over_tls_the_cookie_is_secure(tmp_path: Path) -> None:
    """A listener with `ingest.tls` (a collector): the browser sends the cookie over TLS only."""
    with tls_collector(tmp_path) as (url, ca), httpx.Client(
            verify=ssl.create_default_context(cafile=str(ca)), follow_redirects=False) as client:
        answer = client.get(f"{url}/ui/events")  # no ingest tokens: open, a session at once
        assert answer.status_code == 200
        attributes = [part.strip().lower() for part in answer.headers["set-cookie"].split(";")]
        assert "secure" in attributes
        assert "httponly" in attributes
        assert "samesite=strict" in attributes


# -- the search indexes ------------------------------------------------------------------------


def _indexes(db: Path) -> set[str]:
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {name for (name,) in reader.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'audit_rows_%'")}
    finally:
        reader.close()


def _wait_for_indexes(db: Path) -> set[str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(_indexes(db)) < len(SEARCH_INDEXES):
        time.sleep(0.05)
    return _indexes(db)


def test_a_store_gets_the_search_indexes_once_someone_uses_the_ui(tmp_path: Path) -> None:
    with running_worker(tmp_path / "w", env=ENV, ingest={"tokens": TOKENS}) as worker:
        _fill(worker, _events(10))
        time.sleep(0.5)
        assert _indexes(worker.db) == set()  # ingest alone pays for no index
        with worker.client(follow_redirects=False) as client:
            client.get("/ui/signin")
            assert _indexes(worker.db) == set()  # nor does a visitor who is not signed in
        with sign_in(worker, TOKEN_GLOBEX) as client:
            client.get("/ui/events")
        assert len(_wait_for_indexes(worker.db)) == len(SEARCH_INDEXES)


# -- sealtrail ui --db ---------------------------------------------------------------------------


@contextlib.contextmanager
def local_ui(db: Path, tmp_path: Path, *options: str) -> Iterator[str]:
    port = free_port()
    with (tmp_path / "ui.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sealtrail", "ui", "--db", str(db), "--listen",
             f"127.0.0.1:{port}", *options], stdout=log, stderr=subprocess.STDOUT,
            env={"PYTHONPATH": str(ROOT / "operator")})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/ui/signin", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_sealtrail_ui_reads_a_store_file_and_writes_nothing_unless_asked(
        tmp_path: Path) -> None:
    db = tmp_path / "copy.db"
    with ChainStore(db) as store:
        store.append([Event.model_validate(event) for event in _events(120)])
    before = db.read_bytes()
    with local_ui(db, tmp_path) as url:
        page = httpx.get(f"{url}/ui/events?tenant=globex", timeout=10)
        assert page.status_code == 200
        assert page.text.count("<tr data-seq") == 50
        assert "content-security-policy" in page.headers
        time.sleep(0.5)
    assert _indexes(db) == set()
    assert db.read_bytes() == before
    with local_ui(db, tmp_path, "--index") as url:
        httpx.get(f"{url}/ui/events", timeout=10)
        assert len(_wait_for_indexes(db)) == len(SEARCH_INDEXES)


def test_a_pruned_row_is_explained_not_just_missing(tmp_path: Path) -> None:
    db = tmp_path / "pruned.db"
    signer = generate_keypair(tmp_path / "key")
    with ChainStore(db, checkpoints=CheckpointPolicy(signer, every_rows=20, every_seconds=None),
                    clock=lambda: datetime(2026, 11, 1, tzinfo=UTC)) as store:
        store.append([Event.model_validate({**event, "tenant_id": "acme"})
                      for event in _events(50)])
        result = store.prune(delivered_through_seq=10**6,
                             older_than=datetime(2026, 11, 2, tzinfo=UTC))
    assert result.rows > 0
    first_kept = sqlite3.connect(db).execute(
        "SELECT MIN(tenant_seq) FROM audit_rows WHERE tenant_id = 'acme'").fetchone()[0]
    with local_ui(db, tmp_path) as url:
        gone = httpx.get(f"{url}/ui/t/acme/e/1", timeout=10)
        assert gone.status_code == 404
        assert f"pruned by retention (rows 1..{first_kept - 1} of this chain" in gone.text
        kept = httpx.get(f"{url}/ui/t/acme/e/{first_kept}", timeout=10).text
        assert f"Rows 1..{first_kept - 1} were pruned by retention" in kept
        assert 'rel="prev"' not in kept



def test_with_two_ingest_processes_no_browser_is_ever_given_another_ones_session(
        tmp_path: Path) -> None:
    """The processes that forward to the first keep no cookies of their own.

    A forwarding process that kept the cookies the first process set (a client library's
    cookie jar) would send one person's session with everyone's requests it forwards.
    """
    config = _worker_config(tmp_path)
    config["ingest"]["processes"] = 2
    fresh = httpx.Limits(max_keepalive_connections=0)
    with running_worker(tmp_path, env=ENV, **config) as running:
        with running.client(follow_redirects=False, limits=fresh) as person:
            for _ in range(4):  # sign-ins through both forwarding processes
                form = person.get("/ui/signin")
                csrf = CSRF.search(form.text)
                assert csrf is not None
                signed = person.post("/ui/signin", data={
                    "csrf": csrf.group(1), "token": TOKEN_ACME, "next": "/ui/events"})
                assert signed.status_code == 303, signed.text
        with running.client(follow_redirects=False, limits=fresh) as stranger:
            for _ in range(12):
                page = stranger.get("/ui/events")
                assert page.status_code == 303, "a browser without a session was let in"
                assert page.headers["location"].startswith("/ui/signin")


def test_with_two_ingest_processes_the_ui_works_on_every_connection(tmp_path: Path) -> None:
    """Connections land on either process; the second forwards to the first, streaming.

    Every request here opens a new connection, so the kernel spreads them over both processes:
    a session opened through one is honoured through the other, an export arrives whole and a
    live tail streams through the forwarding process.
    """
    config = _worker_config(tmp_path)
    config["ingest"]["processes"] = 2
    with running_worker(tmp_path, env=ENV, **config) as running:
        _fill(running, _events(2 * ROWS_PER_TENANT))
        fresh = httpx.Limits(max_keepalive_connections=0)
        with running.client(follow_redirects=False, limits=fresh) as client:
            form = client.get("/ui/signin")
            csrf = CSRF.search(form.text)
            assert csrf is not None
            answer = client.post("/ui/signin", data={"csrf": csrf.group(1),
                                                     "token": TOKEN_ACME, "next": "/ui/events"})
            assert answer.status_code == 303, answer.text
            assert "sealtrail_ui=" in answer.headers["set-cookie"]
            for _ in range(12):
                page = client.get("/ui/events")
                assert page.status_code == 200, page.headers.get("location")
                assert "script-src 'self'" in page.headers["content-security-policy"]
            rows = ndjson(client, "tenant=acme")
            assert sorted(rows, key=lambda row: row["seq"]) == [
                row for row in running.rows() if row["tenant_id"] == "acme"]  # whole
            for _ in range(4):  # at least one tail goes through the forwarding process
                with client.stream("GET", "/ui/tail", timeout=20) as stream:
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    _fill(running, [{"event_type": "safety.violation", "severity": "HIGH",
                                     "tenant_id": "acme", "reason": "tail through two"}])
                    assert "tail through two" in _read_tail_until(stream, "tail through two")
