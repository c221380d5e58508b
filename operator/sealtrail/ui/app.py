"""The audit UI: server-rendered pages over the chain store, mounted under `/ui`.

Why server-rendered (Jinja2, a vendored htmx, one small script of our own, no build step): one
read-mostly page does not justify a JavaScript toolchain, and every filter, page and export
runs where the data is, over all of history, never over what a browser happened to load.

Who sees what: a person signs in with an ingest token (the same tenant-bound tokens as `GET
/v1/events`) and sees only those tenants' rows, everywhere (lists, counts, exports, verdicts,
the live tail). The session is a server-side id in an HttpOnly, SameSite=Strict cookie (Secure
on TLS); each POST carries the session's CSRF token. The Content-Security-Policy allows scripts
and styles from this origin only, so nothing a row contains can run in the page.

The UI's own actions (sign-ins, exports, resumes) are audit events in the `_system` chain.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import hmac
import io
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import jinja2
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from sealtrail.api.event import Decision, Severity
from sealtrail.api.worker_api import ExportReport
from sealtrail.chain.checkpoint import CHECKPOINT_EVENT_TYPE, Checkpoint
from sealtrail.chain.keys import PublicKey
from sealtrail.chain.query import (
    Bucket,
    Found,
    connect,
    histogram,
    pruned_through,
    row_at,
    rows_ascending,
    search,
    tenant_names,
)
from sealtrail.chain.verify import Status, VerifyError, verify_store
from sealtrail.ui.backend import NotRecordedError, UiBackend
from sealtrail.ui.sessions import COOKIE, Session, Sessions
from sealtrail.ui.view import PRESETS, RANGES, View, parse_view

__all__ = ["CSP", "PAGE_ROWS", "build_ui_app", "delivery_state"]

log = logging.getLogger("sealtrail.ui")

_HERE: Final = Path(__file__).resolve().parent
#: Rows per page of the list (the next page is a keyset link, so there is no last page cap).
PAGE_ROWS: Final = 50
#: Nothing but this origin's own files; no inline script or style, no framing, no plugins.
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
              "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
              "base-uri 'none'")
_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a filtered URL names what is being investigated
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_STATIC_TYPES: Final = {".js": "text/javascript", ".css": "text/css"}
#: How often the live tail looks for new rows, and how long one stream lasts at most (the
#: browser reconnects from where it was).
TAIL_POLL_SECONDS: Final = 0.5
TAIL_MAX_SECONDS: Final = 300.0
#: Rows an export reads per chunk (each chunk its own short read).
EXPORT_CHUNK: Final = 2_000

_STATE: Final = web.AppKey("ui_state", object)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["ms"] = _ms
    env.filters["delivery_state"] = delivery_state
    env.globals.update(severities=[item.value for item in Severity],
                       decisions=[item.value for item in Decision], ranges=RANGES,
                       presets=PRESETS)
    return env


@dataclass(slots=True)
class _Verdict:
    """One integrity check of one tenant, as the panel shows it."""

    tenant: str
    status: str  # intact, tampered, truncated, error
    ran_at: str
    seconds: float
    rows: int
    first_tenant_seq: int
    head_tenant_seq: int
    seq_low: int | None
    seq_high: int | None
    checkpoint: dict[str, Any] | None
    problem: str | None
    bad_seq: int | None  # global seq to review from (None: nothing to review)
    keys_given: bool
    by: str = ""  # who asked for the check: `ui-session:<fingerprint>`
    bad_tenant_seq: int | None = None  # the first row a problem shows at (None: none)

    def about(self, tenant_seq: int) -> tuple[str, str]:
        """What this check says about one row of the chain: a class and the words."""
        when = f"Server check of {self.ran_at}"
        if self.status == "intact":
            if tenant_seq <= self.head_tenant_seq:
                return "good", (f"{when}: the chain is intact through #{self.head_tenant_seq}, "
                                "this row included.")
            return "", (f"{when}: the chain was intact through #{self.head_tenant_seq}; this "
                        "row came later (check again).")
        if self.status == "error" or self.bad_tenant_seq is None:
            return "bad", f"{when}: {self.status}: {self.problem or 'see the Integrity page'}"
        if tenant_seq >= self.bad_tenant_seq:
            return "bad", (f"{when}: {self.status}; this row is in the affected range (from "
                           f"#{self.bad_tenant_seq}): {self.problem}")
        return "good", (f"{when}: {self.status} from #{self.bad_tenant_seq} on; the rows "
                        "before it, this one included, check out.")


@dataclass(slots=True)
class _State:
    """What the UI keeps between requests (memory only; a restart forgets it)."""

    backend: UiBackend
    sessions: Sessions = field(default_factory=Sessions)
    verdicts: dict[str, _Verdict] = field(default_factory=dict)
    #: The newest checkpoint each check saw, per tenant: held against the store next time,
    #: so a store rolled back (its checkpoint table with it) shows as truncated.
    remembered: dict[str, Checkpoint] = field(default_factory=dict)
    env: jinja2.Environment = field(default_factory=_environment)
    #: Adding the search indexes, started by the first signed-in request (None: not yet).
    indexing: asyncio.Task[None] | None = None
    #: Set when the server shuts down: live tails end at once instead of holding it up (a
    #: stream never finishes by itself, and the runner waits for every handler).
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: The same, for checks running in threads: a verify stops at its next range of rows.
    halt: threading.Event = field(default_factory=threading.Event)
    #: Integrity checks running, by tenant, with when they started (a check of a large chain
    #: takes seconds per million rows: it runs apart from the request that asked for it).
    checking: dict[str, str] = field(default_factory=dict)
    checks: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Person:
    """A signed-in browser: its session and the tenant globs its token may read."""

    session: Session
    globs: tuple[str, ...]

    @property
    def sees_all(self) -> bool:
        """Bound to no tenant (`*`): every tenant, `_system` too, and may resume exports."""
        return "*" in self.globs

    def may_see(self, tenant: str) -> bool:
        """True if `tenant` matches one of the globs."""
        return any(fnmatchcase(tenant, glob) for glob in self.globs)


#: What a pause reason or an error says when a SIEM refused the export's credentials (the
#: export loop pauses after repeated AUTH outcomes: HTTP 401/403, or a backend's own words).
_CREDENTIALS_REFUSED: Final = re.compile(r"\b(401|403)\b|credential|unauthori[sz]ed|forbidden|"
                                         r"token", re.IGNORECASE)


def delivery_state(export: ExportReport) -> tuple[str, str]:
    """A badge for an export: its class (ok, warn, bad) and its words.

    Delivering; lagging by rows and seconds; paused (and, when its reason says so,
    credentials rejected: the fix is a new secret, not a resume).
    """
    if export.paused:
        reason = f"{export.pause_reason or ''} {export.last_error or ''}"
        if _CREDENTIALS_REFUSED.search(reason):
            return "bad", "credentials rejected"
        return "bad", "paused"
    if export.lag_rows:
        return "warn", f"lagging {export.lag_rows} rows / {export.lag_seconds:.1f} s"
    return "ok", "delivering"


def _ms(stamp: str) -> str:
    """A row timestamp to the millisecond: `2026-11-22 10:42:25.123Z`."""
    return f"{stamp[:10]} {stamp[11:23]}Z" if len(stamp) >= 23 else stamp


def _state(request: web.Request) -> _State:
    state = request.app[_STATE]
    assert isinstance(state, _State)  # noqa: S101 - set by build_ui_app only
    return state


def _page(request: web.Request, template: str, status: int = 200,
          **context: Any) -> web.Response:
    state = _state(request)
    body = state.env.get_template(template).render(**context)
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8")


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _safe_next(target: str | None) -> str:
    """Only a path of this UI (never `//elsewhere`, never a line break) as the next page."""
    if target and target.startswith("/ui/") and target.isprintable() and len(target) < 2048:
        return target
    return "/ui/events"


# -- sessions and the person -------------------------------------------------------------------


def _session(request: web.Request) -> Session | None:
    return _state(request).sessions.get(request.cookies.get(COOKIE))


def _set_cookie(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    response.set_cookie(COOKIE, session.id, path="/ui", httponly=True, samesite="Strict",
                        secure=request.secure)


def _person(request: web.Request) -> _Person | None:
    """The signed-in person of the request (set by `_guard`), or None."""
    person = request.get("ui_person")
    return person if isinstance(person, _Person) else None


def _globs_of(state: _State, digest: bytes) -> list[str] | None:
    """The globs of the configured token whose digest a session holds, if it is still there.

    Asked on every request: a token removed from the worker's config (a reload) closes the
    sessions it opened at once. Every configured token is digested and compared in constant
    time; there are a handful.
    """
    found = None
    for token, globs in state.backend.token_tenants():
        if hmac.compare_digest(state.sessions.digest(token), digest) and found is None:
            found = globs
    return found


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request],
                                                          Awaitable[web.StreamResponse]],
                 ) -> web.StreamResponse:
    """Security headers on every answer; a signed-in person everywhere but sign-in and files."""
    state = _state(request)
    path = request.path
    public = path.startswith(("/ui/signin", "/ui/static/"))
    session = state.sessions.get(request.cookies.get(COOKIE))
    fresh = None
    if state.backend.open and not path.startswith("/ui/static/"):
        if session is None:
            fresh = session = state.sessions.new()
        request["ui_person"] = _Person(session, ("*",))
    elif session is not None and session.token_digest is not None:
        globs = _globs_of(state, session.token_digest)
        if globs is not None:
            request["ui_person"] = _Person(session, tuple(globs))
    if "ui_person" in request and state.indexing is None:
        state.indexing = asyncio.create_task(_add_indexes(state.backend))
    if not public and "ui_person" not in request:
        if request.method == "GET" and not path.startswith(("/ui/tail", "/ui/histogram",
                                                             "/ui/export")):
            return _with_headers(_redirect(f"/ui/signin?next={quote(request.path_qs)}"))
        return _with_headers(web.Response(status=401, text="sign in first\n"))
    response = await handler(request)
    if fresh is not None:
        _set_cookie(request, response, fresh)
    return _with_headers(response)


async def _add_indexes(backend: UiBackend) -> None:
    """The store's search indexes, once, off the event loop (the UI works without them)."""
    try:
        await asyncio.to_thread(backend.add_search_indexes)
    except Exception:  # slower pages, not broken ones
        log.exception("cannot add the audit UI's search indexes")


def _with_headers(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _record(request: web.Request, person: _Person, event_type: str, action: str,
                  severity: str = "INFO", **extra: str) -> None:
    """The UI's own audit event, in `_system` (raises NotRecordedError if it cannot be)."""
    extra = {"tenants": ",".join(person.globs) or "-", **extra}
    if request.remote:
        extra["remote"] = request.remote
    await _state(request).backend.record(event_type, severity, action,
                                         f"ui-session:{person.session.fingerprint}", extra)


# -- handlers ----------------------------------------------------------------------------------


async def index(_: web.Request) -> web.StreamResponse:
    """`/ui/`: the events page."""
    return _redirect("/ui/events")


async def signin_form(request: web.Request) -> web.StreamResponse:
    """The sign-in form (a fresh, not signed-in session carries its CSRF token)."""
    state = _state(request)
    if state.backend.open:
        return _redirect("/ui/events")
    session = _session(request) or state.sessions.new()
    response = _page(request, "signin.html", session=session, person=None,
                     next=_safe_next(request.query.get("next")), error=None)
    _set_cookie(request, response, session)
    return response


async def signin(request: web.Request) -> web.StreamResponse:
    """Check the token; on success a new session (new id) for it, and an audit event."""
    state = _state(request)
    form = await request.post()
    session = _session(request)
    target = _safe_next(str(form.get("next", "")))
    if session is None or not session.csrf_ok(str(form.get("csrf", ""))):
        return web.Response(status=403, text="the form is out of date or not from this page; "
                                             "reload it and sign in again\n")
    token = str(form.get("token", "")).strip()
    digest = state.sessions.digest(token)
    globs = _globs_of(state, digest) if token else None
    if globs is None:
        await asyncio.sleep(0.5)  # a guesser gets two tries a second per connection
        response = _page(request, "signin.html", status=401, session=session, person=None,
                         next=target, error="That token is not one this worker accepts.")
        _set_cookie(request, response, session)
        return response
    signed = state.sessions.sign_in(session, digest)
    person = _Person(signed, tuple(globs))
    try:
        await _record(request, person, "audit_ui.sign_in", "sign_in")
    except NotRecordedError:
        state.sessions.end(signed)
        return web.Response(status=503, text="the sign-in could not be recorded in the audit "
                                             "trail, so it was not done; try again\n",
                            headers={"Retry-After": "5"})
    response = _redirect(target)
    _set_cookie(request, response, signed)
    return response


async def signout(request: web.Request) -> web.StreamResponse:
    """End the session (POST with its CSRF token)."""
    person = _person(request)
    form = await request.post()
    if person is None or not person.session.csrf_ok(str(form.get("csrf", ""))):
        return web.Response(status=403, text="missing or wrong CSRF token\n")
    _state(request).sessions.end(person.session)
    response = _redirect("/ui/signin")
    response.del_cookie(COOKIE, path="/ui")
    return response


def _visible(db: Any, person: _Person) -> list[str]:
    return [name for name in tenant_names(db) if person.may_see(name)]


def _scope(person: _Person, visible: list[str]) -> list[str] | None:
    """The tenants a search may touch: None (every one) only for a person who sees all."""
    return None if person.sees_all else visible


def _read(request: web.Request) -> Any:
    return connect(_state(request).backend.store_path)


def _view(request: web.Request) -> View:
    return parse_view(request.query, list(request.query.items()))


def _parsed(found: Found) -> dict[str, Any]:
    """The stored row as an object; a row changed into something else is still shown.

    Only tampering makes a stored row anything but a JSON object, and the page must show it
    (next to its exact bytes) rather than fail: that is when someone needs to look at it.
    """
    try:
        row = orjson.loads(found.body)
    except orjson.JSONDecodeError:
        row = None
    if isinstance(row, dict):
        return row
    return {"(not a row)": "the stored bytes are not a JSON object: the row was changed"}


def _row_context(found: Found) -> dict[str, Any]:
    row = _parsed(found)
    return {"found": found, "row": row,
            "actor": row.get("agent_id") or row.get("identity") or "",
            "summary": row.get("reason") or row.get("action") or row.get("matched_rule") or ""}


async def events(request: web.Request) -> web.StreamResponse:
    """The events page: filters, timeline, newest rows first, a keyset link to older ones."""
    person = _person(request)
    if person is None:
        return _redirect("/ui/signin")
    view = _view(request)
    before = request.query.get("before", "")
    before_seq = int(before) if before.isdigit() and len(before) < 19 else None
    started = time.perf_counter()

    def work() -> tuple[list[str], list[Found]]:
        db = _read(request)
        try:
            visible = _visible(db, person)
            wanted = view.search(_scope(person, visible), datetime.now(UTC))
            return visible, search(db, wanted, before_seq=before_seq, limit=PAGE_ROWS + 1)
        finally:
            db.close()

    visible, found = await asyncio.to_thread(work)
    more = len(found) > PAGE_ROWS
    found = found[:PAGE_ROWS]
    return _page(
        request, "events.html", person=person, session=person.session, view=view, visible=visible,
        rows=[_row_context(item) for item in found], before_seq=before_seq,
        older=view.query(before=found[-1].seq) if more and found else None,
        newest_seq=found[0].seq if found and before_seq is None else 0,
        took_ms=round((time.perf_counter() - started) * 1000, 1),
        deliveries=_deliveries(request, person))


async def histogram_fragment(request: web.Request) -> web.StreamResponse:
    """The timeline: rows per slice of the chosen range, stacked by severity (an SVG)."""
    person = _person(request)
    if person is None:
        return web.Response(status=401)
    view = _view(request)
    now = datetime.now(UTC)

    def work() -> tuple[datetime, datetime, timedelta, list[Bucket]]:
        db = _read(request)
        try:
            wanted = view.search(_scope(person, _visible(db, person)), now)
            since, until = view.bounds(now)
            where, params = wanted.where()
            first, last = (since, until)
            if since is None or until is None:  # open ends go to the rows' own (clients
                low, high = db.execute(  # may stamp rows in the future)
                    f"SELECT MIN(timestamp), MAX(timestamp) FROM audit_rows WHERE {where}",
                    params).fetchone()
                newest = (datetime.fromisoformat(high) + timedelta(microseconds=1) if high
                          else now)  # bars end before their end: take in the newest row
                last = until or max(now, newest)
                first = since or (datetime.fromisoformat(low) if low else None)
            end = last or now
            start = first or end - timedelta(hours=1)
            end = max(end, start + timedelta(minutes=1))
            width, slices = histogram(db, wanted, start=start, end=end)
            return start, end, width, slices
        finally:
            db.close()

    start, end, width, slices = await asyncio.to_thread(work)
    tallest = max((item.total for item in slices), default=0) or 1
    bars = []
    for index, item in enumerate(slices):
        narrowed = view.with_range(item.start, item.end)
        y = 100.0
        stack = []
        for severity in reversed([entry.value for entry in Severity]):
            count = item.counts.get(severity, 0)
            if count:
                height = 100.0 * count / tallest
                y -= height
                stack.append({"severity": severity, "y": round(y, 2),
                              "height": round(height, 2), "count": count})
        bars.append({"index": index, "stack": stack, "total": item.total,
                     "label": f"{item.start:%Y-%m-%d %H:%M:%S} UTC",
                     "href": f"/ui/events?{narrowed.query()}"})
    return _page(request, "histogram.html", bars=bars, count=len(slices), start=start, end=end,
                 width=_duration(width), total=sum(item.total for item in slices))


def _duration(width: timedelta) -> str:
    """A bar's width for people: `15 min`, `2 h 30 min`, `40 s`."""
    seconds = round(width.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


async def event_detail(request: web.Request) -> web.StreamResponse:
    """One row: every field, the bytes as stored, chain position, delivery, neighbours."""
    person = _person(request)
    if person is None:
        return _redirect(f"/ui/signin?next={quote(request.path_qs)}")
    tenant = request.match_info["tenant"]
    raw = request.match_info["tenant_seq"]
    if not raw.isdigit() or len(raw) > 18 or not person.may_see(tenant):
        return _page(request, "missing.html", status=404, person=person,
                     session=person.session, what="No such event among your tenants.")

    def work() -> tuple[Found | None, bool, str | None, int]:
        db = _read(request)
        try:
            found = row_at(db, tenant, int(raw))
            newer = row_at(db, tenant, int(raw) + 1) is not None
            store = db.execute("SELECT value FROM audit_meta WHERE key = 'store_id'").fetchone()
            return found, newer, None if store is None else store[0], pruned_through(db, tenant)
        finally:
            db.close()

    found, newer, store_id, pruned = await asyncio.to_thread(work)
    if found is None:
        what = "No such event among your tenants."
        if 0 < int(raw) <= pruned:
            what = (f"Row {raw} of {tenant} was delivered to every export and then pruned by "
                    f"retention (rows 1..{pruned} of this chain are no longer in this store; "
                    "the SIEM holds them, and the checkpoint kept here vouches for what stays).")
        return _page(request, "missing.html", status=404, person=person,
                     session=person.session, what=what)
    fragment = request.query.get("fragment") == "1"
    signer_key = None
    if found.event_type == CHECKPOINT_EVENT_TYPE:
        extra = _parsed(found).get("extra")
        key_id = extra.get("checkpoint_key_id") if isinstance(extra, dict) else None
        signer_key = next((_raw_key(key) for key in _state(request).backend.public_keys()
                           if key.key_id == key_id), None)
    exports = [{"name": item.name, "delivered": item.cursor >= found.seq,
                "cursor": item.cursor} for item in _deliveries(request, person)]
    return _page(request, "detail_fragment.html" if fragment else "detail.html",
                 person=person, session=person.session, item=_row_context(found),
                 pretty=orjson.dumps(_parsed(found), option=orjson.OPT_INDENT_2
                                     | orjson.OPT_SORT_KEYS).decode(),
                 exact=found.body.decode("utf-8", "replace"), exports=exports,
                 store_id=store_id, has_newer=newer, deliveries=_deliveries(request, person),
                 signer_key=signer_key, pruned=pruned,
                 verdict=_verdict_about(request, tenant, found.tenant_seq))


def _verdict_about(request: web.Request, tenant: str, tenant_seq: int) -> tuple[str, str]:
    """The server's last verdict on the chain, as it bears on one row."""
    verdict = _state(request).verdicts.get(tenant)
    if verdict is None:
        return "", "Not checked since the worker started: the Integrity page runs a check."
    return verdict.about(tenant_seq)


def _raw_key(key: PublicKey) -> str:
    """A public key as base64 of its 32 raw bytes, for the browser's WebCrypto to import."""
    raw = key.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


# -- export ------------------------------------------------------------------------------------

_CSV_COLUMNS: Final = ("seq", "tenant_id", "tenant_seq", "store_id", "timestamp", "event_type",
                       "severity", "decision", "agent_id", "identity", "action", "reason",
                       "prev_hash", "record_hash", "row")
_FORMATS: Final = {"ndjson": "application/x-ndjson", "json": "application/json",
                   "csv": "text/csv; charset=utf-8"}


def _csv_line(found: Found) -> bytes:
    row = _parsed(found)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180: CRLF, quotes doubled
    writer.writerow([found.seq, found.tenant_id, found.tenant_seq, row.get("store_id", ""),
                     found.timestamp, found.event_type, found.severity,
                     row.get("decision", ""), row.get("agent_id", ""), row.get("identity", ""),
                     row.get("action", ""), row.get("reason", ""), row.get("prev_hash", ""),
                     found.record_hash, found.body.decode("utf-8", "replace")])
    return out.getvalue().encode("utf-8")


_EXPORT_HEAD: Final = {"ndjson": b"", "json": b"[",
                        "csv": (",".join(_CSV_COLUMNS) + "\r\n").encode()}
_EXPORT_TAIL: Final = {"ndjson": b"", "json": b"]\n", "csv": b""}


def _encode(kind: str, chunk: list[Found], *, first: bool) -> bytes:
    """One chunk of an export: rows as stored (NDJSON), array members (JSON), or CSV lines."""
    if kind == "ndjson":
        return b"".join(item.body + b"\n" for item in chunk)
    if kind == "json":
        return (b"" if first else b",\n") + b",\n".join(item.body for item in chunk)
    return b"".join(_csv_line(item) for item in chunk)


async def export(request: web.Request) -> web.StreamResponse:
    """The filtered rows, all of them, streamed: NDJSON (as stored), JSON or CSV."""
    person = _person(request)
    if person is None:
        return web.Response(status=401)
    kind = request.match_info["kind"]
    if kind not in _FORMATS:
        return web.Response(status=404, text="formats: ndjson, json, csv\n")
    view = _view(request)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"sealtrail-{view.slug()}-{stamp}.{kind}"
    try:
        await _record(request, person, "audit_ui.export", "export", format=kind,
                      filter=view.query()[:1000] or "all")
    except NotRecordedError:
        return web.Response(status=503, text="the export could not be recorded in the audit "
                                              "trail, so it was not made; try again\n",
                            headers={"Retry-After": "5"})
    response = web.StreamResponse(headers={
        "Content-Type": _FORMATS[kind],
        "Content-Disposition": f'attachment; filename="{name}"'})
    _with_headers(response)
    await response.prepare(request)
    db = _read(request)
    try:
        wanted = view.search(_scope(person, await asyncio.to_thread(_visible, db, person)),
                             datetime.now(UTC))
        chunks = rows_ascending(db, wanted, chunk=EXPORT_CHUNK)
        await response.write(_EXPORT_HEAD[kind])
        stopping = _state(request).stopping
        first = True
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            if stopping.is_set():  # cut, never ended cleanly: the download shows as failed
                log.info("an export was cut short: the worker is stopping")
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write(_encode(kind, chunk, first=first))
            first = False
        await response.write(_EXPORT_TAIL[kind])
    finally:
        db.close()
    await response.write_eof()
    return response


# -- live tail ---------------------------------------------------------------------------------


def _next_rows(db: Any, wanted: Any, after: int) -> list[Found]:
    return next(rows_ascending(db, wanted, after_seq=after, chunk=200), [])


async def tail(request: web.Request) -> web.StreamResponse:
    """Server-sent events: each new matching row as a list row, oldest first."""
    person = _person(request)
    if person is None:
        return web.Response(status=401)
    view = _view(request)
    given = request.headers.get("Last-Event-ID") or request.query.get("after", "")
    after = int(given) if given.isdigit() and len(given) < 19 else 0
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
    _with_headers(response)
    await response.prepare(request)
    env = _state(request).env
    stopping = _state(request).stopping
    db = _read(request)
    deadline = time.monotonic() + TAIL_MAX_SECONDS
    try:
        if not after:
            top = await asyncio.to_thread(
                lambda: db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_rows").fetchone())
            after = int(top[0])
        await response.write(b"retry: 2000\n\n")
        while time.monotonic() < deadline and not stopping.is_set():
            wanted = view.search(_scope(person, await asyncio.to_thread(_visible, db, person)),
                                 datetime.now(UTC))
            chunk = await asyncio.to_thread(_next_rows, db, wanted, after)
            for item in chunk:
                html = env.get_template("row.html").render(item=_row_context(item))
                data = "".join(f"data: {line}\n" for line in html.splitlines() if line.strip())
                await response.write(f"id: {item.seq}\nevent: row\n{data}\n".encode())
                after = item.seq
            if not chunk:
                await response.write(b": idle\n\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), TAIL_POLL_SECONDS)
    except ConnectionResetError:  # the browser went away
        pass
    finally:
        db.close()
    return response


# -- integrity ---------------------------------------------------------------------------------


def _failed(tenant: str, problem: str) -> _Verdict:
    """A check that could not be made: no verdict on the chain, and why."""
    return _Verdict(tenant=tenant, status="error",
                    ran_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), seconds=0.0,
                    rows=0, first_tenant_seq=0, head_tenant_seq=0, seq_low=None, seq_high=None,
                    checkpoint=None, problem=problem, bad_seq=None, keys_given=False)


class _HaltedError(Exception):
    """The server is stopping: a check in progress gives up (its verdict would be lost)."""


def _verify_tenant(state: _State, tenant: str) -> _Verdict:
    path = state.backend.store_path
    keys = list(state.backend.public_keys())
    remembered = [state.remembered[tenant]] if keys and tenant in state.remembered else []
    started = time.perf_counter()
    ran_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def progress(_done: int, _total: int) -> None:
        if state.halt.is_set():
            raise _HaltedError

    try:
        report = verify_store(path, tenant=tenant, checkpoints=remembered, public_keys=keys,
                              processes=1, progress=progress)
    except VerifyError as error:
        return _failed(tenant, str(error))
    seconds = round(time.perf_counter() - started, 3)
    chain = next((item for item in report.tenants if item.tenant_id == tenant), None)
    db = connect(path)
    try:
        low, high = db.execute("SELECT MIN(seq), MAX(seq) FROM audit_rows WHERE tenant_id = ?",
                               (tenant,)).fetchone()
        latest = db.execute(
            "SELECT tenant_id, tenant_seq, head_hash, signed_at, key_id, signature "
            "FROM audit_checkpoints WHERE tenant_id = ? ORDER BY tenant_seq DESC LIMIT 1",
            (tenant,)).fetchone()
        bad = chain.first_bad if chain is not None else None
        bad_seq = None
        if bad is not None and bad.tenant_seq is not None:
            near = db.execute(
                "SELECT MIN(seq) FROM audit_rows WHERE tenant_id = ? AND tenant_seq >= ?",
                (tenant, max(bad.tenant_seq - 1, 1))).fetchone()[0]
            bad_seq = near if near is not None else high
    finally:
        db.close()
    checkpoint = None
    if latest is not None:
        checkpoint = {"tenant_seq": latest[1], "signed_at": latest[3], "key_id": latest[4]}
        if keys and (report.status == Status.INTACT):
            # The table does not say whose chain it is: the store's own id does (a checkpoint
            # of another store's chain would be no evidence about this one, and verify says so).
            name, size, head, signed_at, key_id, signature = latest
            state.remembered[tenant] = Checkpoint(name, size, head, signed_at, key_id, signature,
                                                  store_id=report.store_id)
    status = report.status.name.lower()
    return _Verdict(
        tenant, status, ran_at, seconds, chain.rows if chain else 0,
        (chain.pruned_through + 1) if chain else 0, chain.head_tenant_seq if chain else 0,
        low, high, checkpoint, chain.first_bad.problem if chain and chain.first_bad else None,
        bad_seq, bool(keys),
        bad_tenant_seq=bad.tenant_seq if bad is not None else None)


async def integrity(request: web.Request) -> web.StreamResponse:
    """Each of the person's tenants with its last verdict (and a button to check now)."""
    person = _person(request)
    if person is None:
        return _redirect("/ui/signin?next=/ui/integrity")

    def work() -> list[str]:
        db = _read(request)
        try:
            return _visible(db, person)
        finally:
            db.close()

    visible = await asyncio.to_thread(work)
    state = _state(request)
    return _page(request, "integrity.html", person=person, session=person.session,
                 tenants=visible, verdicts=state.verdicts, checking=state.checking,
                 refresh=any(tenant in state.checking for tenant in visible),
                 keys=bool(state.backend.public_keys()),
                 deliveries=_deliveries(request, person))


async def integrity_run(request: web.Request) -> web.StreamResponse:
    """Verify one tenant's chain (or every visible one) now, on the server."""
    person = _person(request)
    form = await request.post()
    if person is None or not person.session.csrf_ok(str(form.get("csrf", ""))):
        return web.Response(status=403, text="missing or wrong CSRF token\n")
    state = _state(request)
    db = _read(request)
    try:
        visible = await asyncio.to_thread(_visible, db, person)
    finally:
        db.close()
    wanted = str(form.get("tenant", ""))
    tenants = [tenant for tenant in (visible if wanted == "" else [wanted])
               if tenant in visible and tenant not in state.checking]
    stamp = datetime.now(UTC).strftime("%H:%M:%S UTC")
    for tenant in tenants:
        state.checking[tenant] = stamp
    task = asyncio.create_task(_check(state, tenants, f"ui-session:{person.session.fingerprint}"))
    state.checks.add(task)
    task.add_done_callback(state.checks.discard)
    return _redirect("/ui/integrity")


async def _check(state: _State, tenants: list[str], by: str) -> None:
    """Verify `tenants` one after another (one core's worth), recording each verdict."""
    try:
        for tenant in tenants:
            try:
                verdict = await asyncio.to_thread(_verify_tenant, state, tenant)
            except _HaltedError:
                return
            except Exception:  # a verdict of "error" on the page, the cause in the log
                log.exception("the integrity check of %s failed", tenant)
                verdict = _failed(tenant, "the check failed; see the worker's log")
            verdict.by = by
            state.verdicts[tenant] = verdict
            state.checking.pop(tenant, None)
    finally:
        for tenant in tenants:
            state.checking.pop(tenant, None)


# -- deliveries --------------------------------------------------------------------------------


def _deliveries(request: web.Request, _person: _Person) -> Sequence[ExportReport]:
    return _state(request).backend.exports()


async def deliveries(request: web.Request) -> web.StreamResponse:
    """Every export: delivering, lagging, paused and why; resume for who may."""
    person = _person(request)
    if person is None:
        return _redirect("/ui/signin?next=/ui/deliveries")
    return _page(request, "deliveries.html", person=person, session=person.session,
                 deliveries=_deliveries(request, person), message=request.query.get("done"))


async def resume(request: web.Request) -> web.StreamResponse:
    """Resume a paused export: a token bound to no tenant only, as `resume_export` allows."""
    person = _person(request)
    form = await request.post()
    if person is None or not person.session.csrf_ok(str(form.get("csrf", ""))):
        return web.Response(status=403, text="missing or wrong CSRF token\n")
    if not person.sees_all:
        return web.Response(status=403, text="only a token bound to no tenant (tenants: "
                                             "['*']) may resume an export\n")
    name = request.match_info["name"]
    if name not in {item.name for item in _state(request).backend.exports()}:
        return web.Response(status=404, text="no such export\n")
    try:
        await _record(request, person, "audit_ui.resume", "resume", export=name)
    except NotRecordedError:
        return web.Response(status=503, text="the resume could not be recorded in the audit "
                                             "trail, so it was not done; try again\n")
    _state(request).backend.resume(name)
    return _redirect(f"/ui/deliveries?done={quote(name)}")


# -- static files ------------------------------------------------------------------------------


async def static(request: web.Request) -> web.StreamResponse:
    """The vendored htmx, our script and stylesheet (a fixed list: no path from the URL)."""
    name = request.match_info["name"]
    if name not in ("htmx.min.js", "app.js", "ui.css"):
        return web.Response(status=404)
    body = await asyncio.to_thread((_HERE / "static" / name).read_bytes)
    response = web.Response(body=body, content_type=_STATIC_TYPES[Path(name).suffix])
    response.headers["Cache-Control"] = "max-age=300"
    return response


def build_ui_app(backend: UiBackend, *, same_as: web.Application | None = None
                 ) -> web.Application:
    """The UI as an aiohttp application, to mount at `/ui` (`app.add_subapp("/ui", ...)`).

    `same_as`: a UI application built before, whose sessions, verdicts and checks this one
    shares. A worker with several ingest processes serves the UI twice in its first process
    (on the ingest listener, and on the private socket the others forward to); a person
    signed in through one must be signed in through the other.
    """
    app = web.Application(middlewares=[_guard])
    state = _State(backend) if same_as is None else same_as[_STATE]
    assert isinstance(state, _State)  # noqa: S101 - set by this function only
    app[_STATE] = state

    async def stop_streams(_: web.Application) -> None:
        state.stopping.set()
        state.halt.set()
        for task in list(state.checks):
            task.cancel()

    app.on_shutdown.append(stop_streams)
    app.router.add_get("/", index)
    app.router.add_get("/signin", signin_form)
    app.router.add_post("/signin", signin)
    app.router.add_post("/signout", signout)
    app.router.add_get("/events", events)
    app.router.add_get("/histogram", histogram_fragment)
    app.router.add_get("/t/{tenant}/e/{tenant_seq}", event_detail)
    app.router.add_get("/export.{kind}", export)
    app.router.add_get("/tail", tail)
    app.router.add_get("/integrity", integrity)
    app.router.add_post("/integrity", integrity_run)
    app.router.add_get("/deliveries", deliveries)
    app.router.add_post("/exports/{name}/resume", resume)
    app.router.add_get("/static/{name}", static)
    return app

