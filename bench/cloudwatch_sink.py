"""A loopback CloudWatch Logs endpoint for benchmarks: `PutLogEvents` and what creates streams.

    .venv/bin/python bench/cloudwatch_sink.py PORT COUNTFILE

Why not moto: moto checks and stores every event in Python objects and answers a 10,000-event
call in tens of milliseconds, which would measure moto. This sink is a minimal, faithful
stand-in for the parts of the service the backend uses, in the AWS JSON 1.1 protocol botocore
speaks (`X-Amz-Target: Logs_20140328.<Action>`, errors as `{"__type", "message"}` with 400):

- every request must carry a SigV4 `Authorization` header (its signature is not recomputed);
- `CreateLogGroup`, `CreateLogStream`: `ResourceAlreadyExistsException` for one that exists,
  `ResourceNotFoundException` for a stream in a group that does not;
- `PutLogEvents`: `ResourceNotFoundException` for a missing group or stream; the call's limits,
  each an `InvalidParameterException` as the service answers: 1 to 10,000 events, at most
  1,048,576 bytes counted as each message's UTF-8 bytes plus 26, events in chronological order
  and spanning less than 24 hours. Every body is parsed in full.

Not checked, on purpose: the 14-day / 2-hour acceptance window (`rejectedLogEventsInfo`); the
benchmark's rows carry fixed timestamps, and a backlog's age is not what it measures.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from export_sink_counts import Counts

MAX_EVENTS = 10_000
MAX_BYTES = 1_048_576
OVERHEAD = 26
DAY_MS = 24 * 3600 * 1000
JSON_11 = "application/x-amz-json-1.1"


def error(code: str, message: str) -> web.Response:
    return web.Response(status=400, body=orjson.dumps({"__type": code, "message": message}),
                        content_type=JSON_11, headers={"x-amzn-errortype": code})


def make_app(counts: Counts) -> web.Application:  # noqa: C901 - the three actions
    groups: dict[str, set[str]] = {}

    def put(request: dict[str, Any], size: int) -> web.Response:  # noqa: PLR0911 - a rule each
        streams = groups.get(request.get("logGroupName", ""))
        if streams is None:
            return error("ResourceNotFoundException", "The specified log group does not exist.")
        if request.get("logStreamName") not in streams:
            return error("ResourceNotFoundException", "The specified log stream does not exist.")
        events = request.get("logEvents")
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
            return error("InvalidParameterException", "logEvents must hold 1 to 10000 events")
        used, previous, first = 0, None, None
        for event in events:
            stamp, message = event.get("timestamp"), event.get("message")
            if not isinstance(stamp, int) or not isinstance(message, str) or not message:
                return error("InvalidParameterException", "invalid log event")
            if previous is not None and stamp < previous:
                return error("InvalidParameterException", "Log events in a single PutLogEvents "
                             "request must be in chronological order.")
            first = stamp if first is None else first
            if stamp - first >= DAY_MS:
                return error("InvalidParameterException", "The batch of log events in a single "
                             "PutLogEvents request cannot span more than 24 hours.")
            previous = stamp
            used += (len(message) if message.isascii() else len(message.encode())) + OVERHEAD
        if used > MAX_BYTES:
            return error("InvalidParameterException", "Upload too large")
        counts.note(len(events), size)
        return web.Response(body=orjson.dumps({"nextSequenceToken": str(counts.totals[
            "requests"]).rjust(56, "4")}), content_type=JSON_11)

    async def action(request: web.Request) -> web.Response:  # noqa: C901, PLR0911
        body = await request.read()
        if not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
            counts.refused()
            return error("MissingAuthenticationTokenException", "Missing Authentication Token")
        target = request.headers.get("X-Amz-Target", "")
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or not target.startswith("Logs_20140328."):
            counts.refused()
            return error("SerializationException", "bad request")
        name = target.removeprefix("Logs_20140328.")
        group = parsed.get("logGroupName", "")
        if name == "PutLogEvents":
            answer = put(parsed, len(body))
            if answer.status != 200 and "NotFound" not in answer.headers["x-amzn-errortype"]:
                counts.refused()
            return answer
        if name == "CreateLogGroup":
            if group in groups:
                return error("ResourceAlreadyExistsException", "The log group already exists")
            groups[group] = set()
            return web.Response(body=b"{}", content_type=JSON_11)
        if name == "CreateLogStream":
            if group not in groups:
                return error("ResourceNotFoundException", "The specified log group does not "
                             "exist.")
            if parsed.get("logStreamName") in groups[group]:
                return error("ResourceAlreadyExistsException", "The log stream already exists")
            groups[group].add(parsed.get("logStreamName", ""))
            return web.Response(body=b"{}", content_type=JSON_11)
        counts.refused()
        return error("UnknownOperationException", name)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/", action)
    app.on_shutdown.append(lambda _: _flush(counts))
    return app


async def _flush(counts: Counts) -> None:
    counts.flush()


def main() -> None:
    port, count_file = int(sys.argv[1]), Path(sys.argv[2])
    web.run_app(make_app(Counts(count_file)), host="127.0.0.1", port=port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
