"""CloudWatch Logs for tests: the real `moto_server`, behind a front that can fail on purpose.

`MotoServer` runs moto in server mode as a subprocess on a free loopback port. moto keeps its
state in memory, so taking it down would lose what it holds; for outages `CloudWatchCase` puts
a small HTTP front (the shared `HttpReceiver`) between the backend and moto and takes only the
front down: its listening socket is closed and every open connection is cut, so new and pooled
connections both fail, while moto keeps every event. Injected failures are answered by the front
in CloudWatch's own JSON error form, before moto sees the request.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import boto3
import orjson
from botocore.config import Config

from sealtrail.api.export import CloudWatchSpec, ExportSpec, RetrySpec
from tests.receivers.harness import Failure, ReceiverCase
from tests.receivers.http_base import HttpReceiver, Request, Response, free_port

REGION = "us-east-1"

#: Dummy credentials for moto (it does not check signatures), set while a case runs.
TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait for instance metadata on loopback tests
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


class MotoServer:
    """`moto_server -H 127.0.0.1 -p PORT` as a child process, stopped by its own pid."""

    def __init__(self, directory: Path | None = None) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix="moto-", suffix=".log", dir=directory, delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        executable = Path(sys.executable).parent / "moto_server"
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            self.process = subprocess.Popen(
                [str(executable), "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            )
            if self._wait_until_up(timeout):
                return
            self.stop()
        raise RuntimeError(f"moto_server did not start; see {self._log.name}")

    def _wait_until_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                connection.request("GET", "/moto-api/")
                connection.getresponse().read()
            except OSError:
                time.sleep(0.1)
            else:
                return True
            finally:
                connection.close()
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()  # this pid only
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def client(self) -> Any:
        """A boto3 `logs` client straight to moto (for setting up and reading back)."""
        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing",  # noqa: S106 - moto's
        ).client("logs", region_name=REGION, endpoint_url=self.url,
                 config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))


def _error(status: int, code: str, message: str) -> Response:
    """An error in the AWS JSON 1.1 protocol's form, as botocore parses it."""
    body = orjson.dumps({"__type": code, "message": message})
    return Response(status, body, {"content-type": "application/x-amz-json-1.1",
                                   "x-amzn-errortype": code})


class MotoFront(HttpReceiver):
    """Forwards each request to moto; can go down (cutting live connections) and fail on demand."""

    _HOP_HEADERS: ClassVar = frozenset({"connection", "content-length", "transfer-encoding",
                                        "keep-alive", "date", "server"})

    def __init__(self, moto: MotoServer) -> None:
        super().__init__()
        self.moto = moto

    def handle(self, request: Request) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.moto.port, timeout=30)
        try:
            connection.request(request.method, request.path, body=request.body,
                               headers=request.headers)
            answer = connection.getresponse()
            body = answer.read()
            headers = {name.lower(): value for name, value in answer.getheaders()
                       if name.lower() not in self._HOP_HEADERS}
            return Response(answer.status, body, headers)
        finally:
            connection.close()

    def put_requests(self) -> int:
        """How many PutLogEvents requests reached the front."""
        with self.lock:
            return sum(1 for r in self.requests
                       if (r.header("x-amz-target") or "").endswith(".PutLogEvents"))


class CloudWatchCase(ReceiverCase):
    """CloudWatch Logs (moto) for the conformance suite.

    - retryable: `ThrottlingException` (HTTP 400), the failure CloudWatch gives most.
    - permanent: `InvalidParameterException` (HTTP 400), what CloudWatch answers a call it will
      never take (out of order, span over 24 h, too large). Deleting the stream is not used:
      with `createMissing` on (the default) the backend recreates it, so it fails nothing, and
      it cannot be limited to "the next N requests".
    - auth is not offered: moto does not check signatures or keys, and AWS credentials come
      from the standard chain (environment, shared files, IRSA web identity), not from a file
      sealtrail reads, so there is nothing to re-key. `set_credential` does nothing.
    - outages stop the front, never moto (which would lose everything it holds).
    """

    kind = "cloudwatch"
    failures = frozenset({"retryable", "permanent"})
    deduplicates = False

    def __init__(self, directory: Path | None = None) -> None:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self.moto = MotoServer(directory)
        self.front = MotoFront(self.moto)
        self._groups: list[str] = []
        self._saved_environment: dict[str, str | None] | None = None

    def start(self) -> None:
        if self._saved_environment is None:  # the backend (and a worker child) read the chain
            self._saved_environment = {name: os.environ.get(name) for name in TEST_ENVIRONMENT}
            os.environ.update(TEST_ENVIRONMENT)
        if self.moto.process is None:
            self.moto.start()
        self.front.start()

    def stop(self) -> None:
        self.front.stop()

    def close(self) -> None:
        self.front.stop()
        self.moto.close()
        if self._saved_environment is not None:
            for name, value in self._saved_environment.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._saved_environment = None

    def export_spec(self, name: str, credential_file: Path) -> ExportSpec:  # noqa: ARG002
        """An export to the front; `credential_file` is unused (credentials come from the chain)."""
        group = f"/sealtrail/{name}"
        if group not in self._groups:
            self._groups.append(group)
        return ExportSpec(
            name=name,
            cloudwatch=CloudWatchSpec(log_group=group, region=REGION, endpoint_url=self.front.url),
            retry=RetrySpec(initial_backoff_ms=10, max_backoff_ms=200),
        )

    def set_credential(self, value: str) -> None:
        """Nothing to do: see the class docstring."""

    def fail_next(self, failure: Failure, count: int) -> None:
        if failure == "retryable":
            answer = _error(400, "ThrottlingException", "Rate exceeded")
        elif failure == "permanent":
            answer = _error(400, "InvalidParameterException",
                            "Log events in a single PutLogEvents request must be in "
                            "chronological order.")
        else:
            raise ValueError(f"CloudWatch (moto) cannot inject {failure!r} failures")
        self.front.fail_next(count, answer.status, body=answer.body, headers=answer.headers)

    def received(self) -> list[bytes]:
        """Every message in the case's groups, ordered by the row's global `seq`.

        CloudWatch keeps a stream in event-timestamp order, not arrival order, and rows of one
        batch land in several streams; so streams are read from the head and their messages
        sorted by `seq`, stably: duplicates are kept, in the order each stream holds them.
        """
        client = self.moto.client()
        messages: list[bytes] = []
        for group in self._groups:
            for stream in read_group(client, group).values():
                messages.extend(stream)
        return sorted(messages, key=lambda body: orjson.loads(body)["seq"])


def read_stream(client: Any, group: str, stream: str) -> list[bytes]:
    """Every message of one stream, in arrival order, as UTF-8 bytes."""
    messages: list[bytes] = []
    token: str | None = None
    while True:
        arguments: dict[str, Any] = {"logGroupName": group, "logStreamName": stream,
                                     "startFromHead": True}
        if token is not None:
            arguments["nextToken"] = token
        page = client.get_log_events(**arguments)
        messages.extend(event["message"].encode() for event in page["events"])
        if not page["events"] or page.get("nextForwardToken") in (None, token):
            return messages
        token = page["nextForwardToken"]


def stream_names(client: Any, group: str) -> Iterator[str]:
    """The group's stream names, in the order moto lists them (none if the group is missing)."""
    try:
        for page in client.get_paginator("describe_log_streams").paginate(logGroupName=group):
            for stream in page["logStreams"]:
                yield stream["logStreamName"]
    except client.exceptions.ResourceNotFoundException:
        return


def read_group(client: Any, group: str) -> dict[str, list[bytes]]:
    """Every stream of a group and its messages in arrival order."""
    return {stream: read_stream(client, group, stream) for stream in stream_names(client, group)}
