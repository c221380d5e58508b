"""The worker's HTTP API (aiohttp): ingest, status, query, metrics, health, resume.

Every client mistake gets a 4xx with a JSON body naming what is wrong (the event's index and
field), and a rejected batch stores nothing. A 5xx means the worker itself failed. Answers are
given only after the store has committed.

Who may ask what: ingest tokens (`ingest.tokens`, bound to tenants) write and read audit data
on the ingest listener. The admin token (`admin.token`) opens status, metrics and resume, on
both listeners, and nothing else; `/healthz` and `/readyz` are always open (kubelet probes).
Without any token configured a listener asks for none.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import sqlite3
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any, Final, TypeVar

import aiohttp
import orjson
from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter, ValidationError

from sealtrail.api.errors import UNKNOWN_EVENT_FIELD, format_path
from sealtrail.api.event import Event, Severity, parse_timestamp
from sealtrail.api.event_fast import rows_from_json, rows_from_ndjson
from sealtrail.api.worker_api import (
    ADMIN_REALM,
    HEALTH_PATH,
    METRICS_PATH,
    PRE_STOP_PATH,
    READY_PATH,
    RESUME_PATH,
    STATUS_PATH,
)
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.chain.handoff_store import HandoffRefusedError
from sealtrail.chain.ingest_keys import IngestKey, KeyConflict, KeyLimits, KeyReplay
from sealtrail.chain.store import EventTooLargeError, Stored, StoreError
from sealtrail.export.credentials import Credential, CredentialError
from sealtrail.worker.backpressure import RefusedError
from sealtrail.worker.core import IngestCore, WorkerCore, tokens_of
from sealtrail.worker.handoff_receiver import HANDOFF_PATH
from sealtrail.worker.k8s_audit import K8sAuditError, map_event_list
from sealtrail.worker.termination import MAX_GRACE_SECONDS
from sealtrail.worker.ui_mount import mount_ui

__all__ = [
    "CORE",
    "FORWARDED_TLS_HEADER",
    "INGEST",
    "TOKENS",
    "build_admin_app",
    "build_app",
    "build_ingest_app",
    "make_runner",
    "tokens_of",
]

log = logging.getLogger("sealtrail.worker")

CORE: Final = web.AppKey("core", WorkerCore)
INGEST: Final = web.AppKey("ingest", IngestCore)
TOKENS: Final = web.AppKey("tokens", list)
_PRIMARY: Final = web.AppKey("primary", aiohttp.ClientSession)

#: Headers a forwarded request or answer keeps; nothing else crosses between processes.
_FORWARDED_REQUEST: Final = ("Authorization", "Content-Type", "Accept")
_FORWARDED_ANSWER: Final = ("Content-Type", "Retry-After", "WWW-Authenticate")
#: What a browser's request to the UI carries besides (its session cookie, where a live tail
#: left off, where a form came from), and what the UI answers with besides (its cookie, its
#: security headers, a redirect, a download's file name).
_FORWARDED_UI_REQUEST: Final = ("Cookie", "Last-Event-ID", "Origin", "Referer")
_FORWARDED_UI_ANSWER: Final = (
    "Set-Cookie", "Location", "Content-Disposition", "Cache-Control",
    "Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
    "Vary")
#: Set by a further ingest process on what it forwards when its own listener is HTTPS, so the
#: first process marks the UI's cookie Secure; only the private socket's app believes it.
FORWARDED_TLS_HEADER: Final = "X-Sealtrail-Forwarded-TLS"

#: Largest seq a query may name: SQLite's INTEGER is a signed 64-bit number.
_MAX_SEQ: Final = 2**63 - 1
#: ASCII digits only: `int()` would also take `+5`, ` 5`, `5_0` and non-ASCII digits.
_UNSIGNED: Final = re.compile(r"[0-9]{1,19}")
#: An `Idempotency-Key`: 1-255 printable ASCII characters, no spaces (a UUID fits).
_IDEMPOTENCY_KEY: Final = re.compile(r"[!-~]{1,255}")
#: The challenge of a 401 without a token (RFC 6750), and of one with a wrong token.
_CHALLENGE: Final = {"WWW-Authenticate": f'Bearer realm="{ADMIN_REALM}"'}
_INVALID: Final = {"WWW-Authenticate": f'Bearer realm="{ADMIN_REALM}", error="invalid_token"'}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), headers=headers,
                        content_type="application/json")


def _problem(status: int, error: str, problems: list[dict[str, Any]] | None = None,
             headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if problems:
        body["problems"] = problems[:100]
        if len(problems) > 100:
            body["more_problems"] = len(problems) - 100
    return _json(status, body, headers)


# -- authentication --------------------------------------------------------------------------


def _presented(request: web.Request) -> str | None:
    """The bearer token of the request, if it carries one."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    return given if scheme.lower() == "bearer" and given else None


def _same_secret(expected: str, given: str) -> bool:
    """Compare in constant time; hashing first keeps even the expected length from showing."""
    return hmac.compare_digest(
        hashlib.sha256(expected.encode("utf-8", "surrogateescape")).digest(),
        hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest())


_T = TypeVar("_T")


def _tenants_allowed(request: web.Request, *, admin: bool = False,
                     metrics: bool = False) -> list[str] | web.Response | None:
    """The tenant globs the caller may act for; None when no token is asked for here.

    With `admin` (status, metrics, resume) the admin token is taken too, as bound to no
    tenant; it never opens audit data. A token that cannot be read is logged by where it is
    looked for (never a value); if no other token matched, the answer is 503, not 401, so that
    the caller is not told its right token is wrong.
    """
    tokens: list[tuple[Credential, list[str]]] = request.app[TOKENS]
    admin_token = request.app[CORE].admin_token if admin else None
    metrics_token = request.app[CORE].metrics_token if metrics and admin_token else None
    if not tokens and admin_token is None:
        return None
    given = _presented(request)
    if given is None:
        wanted = ("" if admin_token is None else
                  ": the admin token (admin.token)" if not tokens else
                  ": an ingest token or the admin token (admin.token)")
        return _problem(401, f"a bearer token is required{wanted}", headers=_CHALLENGE)
    candidates = [(admin_token, ["*"])] if admin_token is not None else []
    if metrics_token is not None:  # opens /metrics, which holds no tenant's data
        candidates.append((metrics_token, ["*"]))
    return _matching(given, [*candidates, *tokens], "token")


def _matching(given: str, candidates: list[tuple[Credential, _T]],
              what: str) -> _T | web.Response:
    """What the first credential equal to `given` stands for; else the answer to give.

    A credential that cannot be read is logged by where it is looked for (never a value); if
    no other one matched, the answer is 503, not 401, so that the caller is not told its right
    token is wrong.
    """
    unreadable = False
    for credential, meaning in candidates:
        try:
            expected = credential.value()
        except CredentialError as error:  # names the file or variable, never a value
            log.error("cannot read a %s: %s", what, error)  # noqa: TRY400 - no traceback wanted
            unreadable = True
            continue
        if _same_secret(expected, given):
            return meaning
    if unreadable:
        return _problem(503, f"the worker cannot read a {what} it checks; see its log",
                        headers={"Retry-After": "5"})
    return _problem(401, "the bearer token is not valid", headers=_INVALID)


#: Events as the store takes them: each one's row fields (`Event.row_fields`).
Rows = list[dict[str, Any]]


def _check_tenants(rows: Rows, allowed: list[str] | None,
                   default_tenant: str) -> web.Response | None:
    if allowed is None:
        return None
    for index, row in enumerate(rows):
        tenant = row.get("tenant_id") or default_tenant
        if not any(fnmatchcase(tenant, glob) for glob in allowed):
            return _problem(403, "this token may not write for that tenant", [
                {"index": index, "field": "tenant_id", "message": f"tenant {tenant!r} is not "
                 "among the tenants this token is bound to"}])
    return None


# -- parsing ---------------------------------------------------------------------------------


_EVENT_LIST: Final = TypeAdapter(list[Event])


def _invalid(error: ValidationError, index: int | None = None) -> web.Response:
    """400 naming each problem's event (by index) and field."""
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        if detail["type"] == "json_invalid":
            return _problem(400, "malformed JSON", [{"field": "", "message": detail["msg"]}])
        location = tuple(detail["loc"])
        at = index
        if at is None and location and isinstance(location[0], int):
            at, location = location[0], location[1:]
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            message = UNKNOWN_EVENT_FIELD
        elif detail["type"] == "missing":
            message = "is required"
        elif detail["type"] == "model_type":
            message = "an event must be a JSON object"
        problems.append({"index": at or 0, "field": format_path(location), "message": message})
    return _problem(400, "invalid events; nothing of this batch was stored", problems)


def _parse_ndjson(raw: bytes) -> Rows | web.Response:
    rows = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(Event.model_validate_json(line).row_fields())
        except ValidationError as error:
            if any(detail["type"] == "json_invalid" for detail in error.errors()):
                return _problem(400, "malformed NDJSON", [
                    {"line": number, "field": "", "message": "not valid JSON"}])
            return _invalid(error, len(rows))
    return rows


def _parse_events(raw: bytes, content_type: str) -> Rows | web.Response:  # noqa: PLR0911
    """One object, a JSON array, or NDJSON; every event validated, every problem named.

    Two validators, one meaning (api/event_fast.py): msgspec first, straight from the request
    bytes into row fields, for what is surely valid; pydantic (`Event`) for the rest, which
    either accepts it or names each problem precisely. Validation was most of what ingest cost
    per event; msgspec does the same checks in a fraction of the time.
    """
    text = raw.strip()
    if not text:
        return _problem(400, "the body is empty; send an event, a JSON array or NDJSON")
    if "ndjson" in content_type:
        fast = rows_from_ndjson(raw)
        return fast if fast is not None else _parse_ndjson(raw)
    fast = rows_from_json(text)
    if fast is not None:
        return fast
    try:
        if text[:1] == b"[":
            return [event.row_fields() for event in _EVENT_LIST.validate_json(text)]
        return [Event.model_validate_json(text).row_fields()]
    except ValidationError as error:
        malformed = any(detail["type"] == "json_invalid" for detail in error.errors())
        if malformed and text[:1] == b"{" and b"\n" in text:
            return _parse_ndjson(raw)  # NDJSON sent without saying so
        if not malformed and text[:1] not in (b"[", b"{"):
            return _problem(400, "invalid events; nothing of this batch was stored", [
                {"index": 0, "field": "", "message": "an event must be a JSON object"}])
        return _invalid(error, None if text[:1] == b"[" else 0)


async def _body(request: web.Request, core: IngestCore) -> bytes | web.Response:
    limit = core.config.ingest.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _problem(413, f"the body is over the limit of {limit} bytes")
    timeout = core.config.ingest.read_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _problem(413, f"the body is over the limit of {limit} bytes")
    except TimeoutError:
        log.info("a client sent its body too slowly (over %s s); answered 408", timeout)
        return _problem(408, f"the body did not arrive within {timeout:g} seconds "
                             "(ingest.readTimeoutSeconds); nothing was stored",
                        headers={"Connection": "close"})


# -- handlers --------------------------------------------------------------------------------


def _answer(stored: list[Stored]) -> bytes:
    """The 200 answer's body: where each event landed.

    Dicts, not the dataclasses themselves: orjson writes a dict three times as fast as it
    walks a slotted dataclass's fields (0.12 µs against 0.37 µs an event, measured).
    """
    return orjson.dumps({
        "stored": len(stored),
        "events": [{"seq": s.seq, "tenant_id": s.tenant_id, "tenant_seq": s.tenant_seq,
                    "record_hash": s.record_hash} for s in stored],
    })


def _replayed(known: KeyReplay | KeyConflict) -> web.Response:
    if isinstance(known, KeyConflict):
        return _problem(422, "Idempotency-Key: was used for a different request (another "
                             "body); use a new key for new events")
    return web.Response(status=200, body=known.answer, content_type="application/json",
                        headers={"Idempotent-Replayed": "true"})


async def _store(request: web.Request, rows: Rows,  # noqa: PLR0911
                 key: IngestKey | None, source_bytes: int | None) -> web.Response:
    core = request.app[INGEST]
    limit = core.config.ingest.max_events_per_request
    if len(rows) > limit:
        return _problem(413, f"{len(rows)} events in one request; the limit is {limit}")
    if not core.ready:
        return _problem(503, "the worker is shutting down; nothing was stored",
                        headers={"Retry-After": "5"})
    try:
        stored = await core.append_fields(rows, request.content_length or 0, key, source_bytes)
    except RefusedError as refused:
        return _problem(429, str(refused),
                        headers={"Retry-After": str(refused.retry_after_seconds)})
    except EventTooLargeError as error:
        return _problem(413, "an event is too large; nothing of this batch was stored", [
            {"index": error.index, "field": "", "message": str(error).split(": ", 1)[-1]}])
    except StoreError:
        log.exception("store write failed")
        return _problem(500, "the store could not be written; nothing of this batch was stored")
    if not isinstance(stored, list):  # the key's request committed first, in another request
        return _replayed(stored)
    return web.Response(status=200, body=_answer(stored), content_type="application/json")


async def _ingest(  # noqa: PLR0911
    request: web.Request, parse: Callable[[bytes], Rows | web.Response],
    *, events_api: bool = False,
) -> web.Response:
    """Authenticate, read the body, parse it into rows, check tenants, store.

    `events_api`: the body is the events themselves (`POST /v1/events`), which takes an
    `Idempotency-Key`, and whose size bounds every row's (`ChainStore.append_fields`).
    """
    core = request.app[INGEST]
    allowed = _tenants_allowed(request)
    if isinstance(allowed, web.Response):
        return allowed
    key = request.headers.get("Idempotency-Key") if events_api else None
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        return _problem(400, "Idempotency-Key: must be 1-255 printable ASCII characters "
                             "without spaces (a UUID, say)")
    raw = await _body(request, core)
    if isinstance(raw, web.Response):
        return raw
    rows = parse(raw)
    if isinstance(rows, web.Response):
        return rows
    refused = _check_tenants(rows, allowed, core.config.store.default_tenant)
    if refused is not None:
        return refused
    source_bytes = len(raw) if events_api else None
    if key is None:
        return await _store(request, rows, None, source_bytes)
    return await _store_once(request, rows, key, raw)


async def _store_once(request: web.Request, rows: Rows, key: str, raw: bytes) -> web.Response:
    """Store under an `Idempotency-Key`: a retry of a stored request gets the first answer.

    The key and its answer commit in the transaction of the rows (chain/ingest_keys.py); the
    look-up first answers a retry without the write lock, and past back-pressure.
    """
    core = request.app[INGEST]
    digest = hashlib.sha256(request.content_type.encode() + b"\n" + raw).hexdigest()
    try:
        known = await asyncio.to_thread(core.store.find_key, key, digest)
    except sqlite3.Error:
        log.exception("cannot read the idempotency keys")
        return _problem(503, "idempotency keys cannot be read; nothing was stored",
                        headers={"Retry-After": "5"})
    if known is not None:
        return _replayed(known)
    return await _store(request, rows, IngestKey(key, digest, _answer), len(raw))


async def post_events(request: web.Request) -> web.Response:
    """`POST /v1/events`: one event, a JSON array of events, or NDJSON."""
    return await _ingest(request, lambda raw: _parse_events(raw, request.content_type),
                         events_api=True)


async def post_k8s_audit(request: web.Request) -> web.Response:
    """`POST /v1/k8s-audit`: an `audit.k8s.io/v1` EventList from the apiserver's webhook."""
    return await _ingest(request, _parse_k8s_audit)


def _parse_k8s_audit(raw: bytes) -> Rows | web.Response:
    try:
        events = map_event_list(orjson.loads(raw))
    except orjson.JSONDecodeError as error:
        return _problem(400, "malformed JSON", [{"field": "", "message": str(error)}])
    except K8sAuditError as error:
        if error.index is None and not error.field:
            return _problem(400, str(error))
        return _problem(400, str(error), [{"index": error.index or 0, "field": error.field,
                                           "message": error.message}])
    return [event.row_fields() for event in events]


async def get_events(request: web.Request) -> web.Response:  # noqa: PLR0911
    """`GET /v1/events?tenant=&type=&severity=&since=&until=&after_seq=&limit=`."""
    allowed = _tenants_allowed(request)
    if isinstance(allowed, web.Response):
        return allowed
    query = request.query
    tenant = query.get("tenant")
    if allowed is not None and (tenant is None or not any(
            fnmatchcase(tenant, glob) for glob in allowed)):
        return _problem(403, "this token may only read its own tenants; name one with ?tenant=")
    severities = query.getall("severity", [])
    unknown = [value for value in severities if value not in Severity.__members__]
    if unknown:
        return _problem(400, f"severity: unknown value {unknown[0]!r}")
    numbers: dict[str, int] = {}
    for name, default, top in (("after_seq", 0, _MAX_SEQ), ("limit", 100, _MAX_SEQ)):
        given = query.get(name)
        if given is not None and not _UNSIGNED.fullmatch(given):
            return _problem(400, f"{name}: must be a whole number from 0 to {top}")
        numbers[name] = default if given is None else int(given)
        if numbers[name] > top:
            return _problem(400, f"{name}: must be a whole number from 0 to {top}")
    after_seq, limit = numbers["after_seq"], min(numbers["limit"], 10_000)
    bounds: dict[str, str | None] = {}
    for name in ("since", "until"):
        given = query.get(name)
        try:
            bounds[name] = None if given is None else parse_timestamp(given)
        except ValueError as error:  # the one spelling rows use, so text compares
            return _problem(400, f"{name}: {error}")
    rows = request.app[CORE].store.query(
        tenant=tenant, event_type=query.get("type"), severities=severities or None,
        since=bounds["since"], until=bounds["until"], after_seq=after_seq, limit=max(limit, 1))
    return web.Response(body=b"".join(row + b"\n" for row in rows),
                        content_type="application/x-ndjson")


async def get_status(request: web.Request) -> web.Response:
    """`GET /v1/status`: delivery truth per export, chain heads per tenant (`WorkerStatus`)."""
    refused = _tenants_allowed(request, admin=True)
    if isinstance(refused, web.Response):
        return refused
    return web.Response(body=request.app[CORE].report().model_dump_json(),
                        content_type="application/json")


async def resume_export(request: web.Request) -> web.Response:
    """`POST /v1/exports/{name}/resume`: the admin token, or one bound to no tenant (`["*"]`).

    An export carries every tenant's rows, so a token bound to some tenants must not steer it.
    """
    allowed = _tenants_allowed(request, admin=True)
    if isinstance(allowed, web.Response):
        return allowed
    if allowed is not None and "*" not in allowed:
        return _problem(403, "only a token bound to no tenant (tenants: ['*']) may resume "
                             "an export; this one is bound to some tenants")
    core = request.app[CORE]
    name = request.match_info["name"]
    if name not in core.engine.loops:
        return _problem(404, f"no export named {name!r}")
    core.engine.resume(name)
    return _json(200, {"resumed": name})


async def get_metrics(request: web.Request) -> web.Response:
    """`GET /metrics`: Prometheus text format (the admin token or `admin.metricsToken`)."""
    refused = _tenants_allowed(request, admin=True, metrics=True)
    if isinstance(refused, web.Response):
        return refused
    return web.Response(body=generate_latest(request.app[CORE].registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(_: web.Request) -> web.Response:
    """Alive: the process answers."""
    return _json(200, {"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the store is open and ingest accepts (503 while draining)."""
    core = request.app[CORE]
    if not core.ready:
        return _json(503, {"ready": False, "reason": "starting or shutting down"})
    return _json(200, {"ready": True})


async def pre_stop(request: web.Request) -> web.Response:
    """`GET /v1/lifecycle/pre-stop?grace=N`: the kubelet began stopping the pod, N s of grace.

    The kubelet's preStop `httpGet` hook, which carries no credentials; why that is safe enough
    is in worker/termination.py. The exports are woken at once: the application is shutting
    down, and every second of its shutdown is one the backlog can use.
    """
    core = request.app[CORE]
    raw = request.query.get("grace", "")
    try:
        grace = int(raw)
    except ValueError:
        grace = -1
    if not 0 < grace <= MAX_GRACE_SECONDS:
        return _problem(400, f"grace must be a whole number of seconds, 1 to "
                             f"{MAX_GRACE_SECONDS}; got {raw[:20]!r}")
    if core.termination.begin(grace):
        log.info("the pod began stopping: %d s of grace from now", grace)
        core.engine.notify()
    return _json(200, {"grace_seconds": core.termination.grace_seconds})


#: The answer to each kind of refused handoff (see `chain.handoff_store.RefusalKind`).
_HANDOFF_REFUSALS: Final = {"malformed": 400, "invalid": 422, "conflict": 409, "too_many": 413}


def _handoff_caller(request: web.Request, tokens: list[Credential]) -> web.Response | None:
    """None if the request carries one of `handoff.accept.tokens`; else the answer to give.

    Only those tokens open the route: an ingest or admin token is not a collector's consent to
    keep rows for a store it does not know.
    """
    given = _presented(request)
    if given is None:
        return _problem(401, "a bearer token is required: one of handoff.accept.tokens",
                        headers=_CHALLENGE)
    found = _matching(given, [(credential, True) for credential in tokens], "handoff token")
    return found if isinstance(found, web.Response) else None


async def post_handoff(request: web.Request) -> web.Response:  # noqa: PLR0911
    """`POST /v1/handoff`: sealed rows a stopping worker could not deliver (NDJSON, as stored).

    Answers 200 `{"rows", "stored", "duplicates"}` only after the commit; any refusal (a
    malformed or altered row, a fork, a broken link) is a 4xx naming the line or the chain and
    position, and keeps nothing of the request.
    """
    core = request.app[CORE]
    receiver = core.handoff_receiver
    if receiver is None:
        return _problem(404, "this worker takes no handoffs (its config has no handoff.accept)")
    refused = _handoff_caller(request, receiver.tokens)
    if refused is not None:
        return refused
    if not core.ready:
        return _problem(503, "the worker is shutting down; nothing was stored",
                        headers={"Retry-After": "1"})
    raw = await _body(request, core)
    if isinstance(raw, web.Response):
        return raw
    try:
        core.backpressure.check_room(len(raw))
    except RefusedError as full:  # the sender retries, or tells its log what it left
        return _problem(429, f"{full}; nothing of this request was stored",
                        headers={"Retry-After": str(full.retry_after_seconds)})
    try:
        received = await receiver.receive(raw)
    except HandoffRefusedError as error:
        log.warning("refused a handoff: %.500s", error)
        return _problem(_HANDOFF_REFUSALS[error.kind],
                        f"{error}; nothing of this request was stored", [error.problem()])
    except StoreError:
        log.exception("the handoff store could not be written")
        return _problem(500, "the handoff store could not be written; nothing of this request "
                             "was stored")
    return _json(200, {"rows": received.stored + received.duplicates,
                       "stored": received.stored, "duplicates": received.duplicates})


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as error:  # aiohttp's own 404/405/413: keep them JSON
        return _problem(error.status, error.reason)
    return response


def _ingest_routes(app: web.Application, core: IngestCore) -> None:
    app[INGEST] = core
    spec = core.config.ingest
    core.store.key_limits = KeyLimits(spec.idempotency.keep_seconds, spec.idempotency.max_keys)
    # The core's own list: every app of this process sees a config change's new tokens.
    app[TOKENS] = core.tokens
    app.router.add_post("/v1/events", post_events)
    app.router.add_post("/v1/k8s-audit", post_k8s_audit)
    app.router.add_get(HEALTH_PATH, healthz)


def build_app(core: WorkerCore) -> web.Application:
    """The aiohttp application for `core`."""
    app = web.Application(client_max_size=core.config.ingest.max_body_bytes,
                          middlewares=[_errors])
    _ingest_routes(app, core)
    app[CORE] = core
    app.router.add_get("/v1/events", get_events)
    app.router.add_post(HANDOFF_PATH, post_handoff)
    _admin_routes(app)
    mount_ui(app, core)  # the audit UI, under /ui: the same listener and tokens as above
    return app


def _admin_routes(app: web.Application) -> None:
    app.router.add_get(STATUS_PATH, get_status)
    app.router.add_post(RESUME_PATH, resume_export)
    app.router.add_get(METRICS_PATH, get_metrics)
    app.router.add_get(READY_PATH, readyz)


def build_admin_app(core: WorkerCore) -> web.Application:
    """The admin listener's application: status, metrics, health, resume; never ingest.

    It carries no audit data (no events in, no rows out) and no secrets, which is why it may
    listen on the pod's address for the operator and Prometheus while ingest stays on
    loopback. With `admin.token` set, all but `/healthz` and `/readyz` want that token (ingest
    tokens are not taken here); without it, anyone who reaches the port may ask, so keep it
    behind a NetworkPolicy (docs/operations.md has one).
    """
    app = web.Application(middlewares=[_errors])
    app[CORE] = core
    app[TOKENS] = []  # ingest tokens are for audit data, which is not served here
    app.router.add_get(HEALTH_PATH, healthz)
    app.router.add_get(PRE_STOP_PATH, pre_stop)
    _admin_routes(app)
    return app


def build_ingest_app(core: IngestCore, primary: aiohttp.ClientSession) -> web.Application:
    """The application of a further ingest process: ingest here, the rest from the first.

    The kernel hands each connection to whichever process accepts it, so every process must
    answer every path; status, metrics, queries and resume belong to the process that runs
    the exports, and are forwarded to it over `primary` (a session on its private socket).
    """
    app = web.Application(client_max_size=core.config.ingest.max_body_bytes,
                          middlewares=[_errors])
    _ingest_routes(app, core)
    app[_PRIMARY] = primary
    app.router.add_route("*", "/{path:.*}", _forward)
    return app


async def _forward(request: web.Request) -> web.StreamResponse:
    """Ask the first process, and answer with what it said.

    The UI's answers are streamed as they come (a live tail never ends by itself; an export
    may be a million rows), with no overall time limit and no redirect followed on the way.
    """
    ui = request.path == "/ui" or request.path.startswith("/ui/")
    names = (*_FORWARDED_REQUEST, *_FORWARDED_UI_REQUEST) if ui else _FORWARDED_REQUEST
    headers = {name: request.headers[name] for name in names if name in request.headers}
    if ui and request.secure:
        headers[FORWARDED_TLS_HEADER] = "1"
    body = None
    if request.can_read_body:
        timeout = request.app[INGEST].config.ingest.read_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                body = await request.read()
        except TimeoutError:
            return _problem(408, f"the body did not arrive within {timeout:g} seconds",
                            headers={"Connection": "close"})
    try:
        if ui:
            return await _stream_from_primary(request, body, headers)
        async with request.app[_PRIMARY].request(
                request.method, f"http://worker{request.rel_url}", data=body,
                headers=headers) as answer:
            payload = await answer.read()
            kept = {name: answer.headers[name] for name in _FORWARDED_ANSWER
                    if name in answer.headers}
            return web.Response(status=answer.status, body=payload, headers=kept)
    except aiohttp.ClientError:
        log.warning("cannot reach the worker's first process for %s", request.path)
        return _problem(503, "the worker is starting or shutting down",
                        headers={"Retry-After": "1"})


async def _stream_from_primary(request: web.Request, body: bytes | None,
                               headers: dict[str, str]) -> web.StreamResponse:
    """Forward one UI request and stream the first process's answer back as it comes."""
    async with request.app[_PRIMARY].request(
            request.method, f"http://worker{request.rel_url}", data=body, headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as answer:
        response = web.StreamResponse(status=answer.status)
        for name in (*_FORWARDED_ANSWER, *_FORWARDED_UI_ANSWER):
            for value in answer.headers.getall(name, ()):
                response.headers.add(name, value)
        await response.prepare(request)
        async for chunk in answer.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


# -- the server: slow and half-closing clients, bad requests ---------------------------------


class _RequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, with two changes.

    A client that half-closes after sending (`shutdown(SHUT_WR)`, as `nc -N` and some proxies
    do) still gets its answer: asyncio would otherwise close the whole connection at the EOF,
    after the events were committed but before the answer. And a request aiohttp cannot parse
    is a client's mistake: one INFO line and a JSON 400, not an ERROR with a traceback.
    """

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio's protocol says bool
        """The client sends no more: answer what it sent, then close (keep writing till then)."""
        if self._waiter is not None and not self._waiter.done() and not self._messages:
            self.force_close()  # idle: nothing to answer
        else:
            self.close()
        return True

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Answer a malformed request with JSON, logged on one line without its content."""
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # The message may quote the request line or a header, so only its kind is logged.
        log.info("bad HTTP request from %s: %s (answered %d)", request.remote,
                 type(exc).__name__, status)
        answer = _problem(status, f"malformed HTTP request ({type(exc).__name__})")
        answer.force_close()
        return answer


class _Server(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class _AppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server, making our connection handler
        return server


def make_runner(app: web.Application, config: WorkerConfig) -> web.AppRunner:
    """The runner to serve `app` with: no access log, and slow clients timed out.

    A client that has not sent a whole request line and headers within
    `ingest.readTimeoutSeconds` of connecting (or of its previous answer) is disconnected; so
    is an idle keep-alive connection after as long. The body has as long again (`_body`).
    """
    return _AppRunner(app, access_log=None,
                      keepalive_timeout=config.ingest.read_timeout_seconds)
