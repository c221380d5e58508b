"""The worker's optional NATS JetStream source: a durable pull consumer, acked after commit.

Why pull and why durable: the worker asks for a batch only when it can take one, so
back-pressure costs nothing (unfetched messages simply wait in JetStream), and the consumer's
position survives restarts of the worker and of the connection.

The guarantee is the same as the HTTP ingest's: a message is acknowledged only after
`WorkerCore.append` returned, that is after the transaction holding its event committed. A
crash between the commit and the ack makes JetStream deliver the message again, so an event
may be stored twice (each copy is a proper chain row) but never lost. An invalid message is
terminated (never redelivered, so it cannot block the stream) only after it was logged by
subject, stream sequence and field error, and counted in `sealtrail_audit_nats_invalid_total`.

The stream itself is never created here: its subjects, retention and replicas are the choice
of whoever runs NATS, and a worker silently creating a stream on a typo would lose the
operator's intent. A missing stream is reported (log and `status.last_error`) and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from sealtrail.api.errors import field_errors
from sealtrail.api.event import Event
from sealtrail.api.worker_config import NatsSpec
from sealtrail.chain.store import EventTooLargeError
from sealtrail.worker.backpressure import RefusedError
from sealtrail.worker.core import WorkerCore

__all__ = ["NatsSource", "NatsStatus", "StreamMissingError"]

log = logging.getLogger("sealtrail.worker.nats")

T = TypeVar("T")

#: How long one fetch waits for messages; also bounds how late `stop()` is noticed.
FETCH_TIMEOUT_SECONDS: Final = 1.0
#: How often to look at back-pressure again while it is closed.
PAUSE_SECONDS: Final = 0.25
#: Reconnect backoff after a failed session: doubles from the first to the last.
BACKOFF_SECONDS: Final = (0.5, 30.0)
#: ack_wait of a consumer we create. Long enough for a commit; `in_progress` covers waits.
ACK_WAIT_SECONDS: Final = 30.0

# One counter per registry: a source restarted on the same worker must not register twice.
_INVALID: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def _invalid_counter(registry: CollectorRegistry) -> Counter:
    counter = _INVALID.get(registry)
    if counter is None:
        counter = Counter(
            "sealtrail_audit_nats_invalid_total",
            "NATS messages terminated because they were not a valid audit event.",
            registry=registry,
        )
        _INVALID[registry] = counter
    return counter


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class StreamMissingError(Exception):
    """The configured stream does not exist; sealtrail does not create it."""


class _Stopped(Exception):  # noqa: N818 - a signal inside this module, not an error
    """`stop()` was called while waiting."""


@dataclass(slots=True)
class NatsStatus:
    """What the source is doing, for status pages and tests (never message content)."""

    connected: bool = False
    paused: bool = False
    consumed: int = 0
    invalid: int = 0
    last_error: str | None = None


class NatsSource:
    """Pull audit events from one JetStream durable consumer into a `WorkerCore`."""

    def __init__(self, core: WorkerCore, spec: NatsSpec) -> None:
        """Bind to the worker; nothing connects until `run`."""
        self.core = core
        self.spec = spec
        self.status = NatsStatus()
        self.invalid_total = _invalid_counter(core.registry)
        self._stopping = asyncio.Event()
        self._closing = False

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to return: a batch being stored is finished and acked first."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until `stop()`; a failed session is logged and retried with backoff."""
        backoff = BACKOFF_SECONDS[0]
        while not self._stopping.is_set():
            try:
                await self._session()
                backoff = BACKOFF_SECONDS[0]
            except _Stopped:
                break
            except StreamMissingError as error:
                self.status.last_error = str(error)
                log.error("%s", error)  # noqa: TRY400 - the message is the point, not a traceback
            except (nats.errors.Error, OSError) as error:
                self.status.last_error = _describe(error)
                log.warning("NATS source: %s; reconnecting in %.1fs",
                            self.status.last_error, backoff)
            self.status.connected = False
            with contextlib.suppress(_Stopped):
                await self._sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_SECONDS[1])
        self.status.connected = False

    async def _until_stopped(self, waiting: Awaitable[T]) -> T:
        """Await `waiting`, or raise `_Stopped` (cancelling it) as soon as `stop()` is called."""
        work = asyncio.ensure_future(waiting)
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not work.done():  # stopped, or this task itself cancelled: leave nothing behind
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
        if work.cancelled():
            raise _Stopped
        return work.result()

    async def _sleep(self, seconds: float) -> None:
        await self._until_stopped(asyncio.sleep(seconds))

    # -- one connection ------------------------------------------------------------------

    async def _connect(self) -> Client:
        """Connect; nats-py then reconnects by itself, forever, buffering what we publish."""

        async def on_error(error: Exception) -> None:
            self.status.last_error = _describe(error)
            log.warning("NATS: %s", self.status.last_error)

        async def on_disconnect() -> None:
            self.status.connected = False
            if not self._closing:
                log.warning("NATS: disconnected from %s; reconnecting", self._where())

        async def on_reconnect() -> None:
            self.status.connected = True
            self.status.last_error = None
            log.info("NATS: reconnected to %s", self._where())

        return await self._until_stopped(nats.connect(
            self.spec.url, name="sealtrail-worker", max_reconnect_attempts=-1,
            error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
        ))

    def _where(self) -> str:
        # The URL may carry user:password; name only the stream and subject.
        return f"stream {self.spec.stream!r} (subject {self.spec.subject!r})"

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        try:
            await js.stream_info(self.spec.stream)
        except nats.js.errors.NotFoundError:
            raise StreamMissingError(
                f"NATS stream {self.spec.stream!r} does not exist: sealtrail does not create "
                f"it (its retention and replicas are yours to choose); create it with subjects "
                f"covering {self.spec.subject!r}, e.g. `nats stream add {self.spec.stream} "
                f"--subjects '{self.spec.subject}'`. Retrying."
            ) from None
        # Used only if the durable does not exist yet; an existing one keeps its own config.
        config = api.ConsumerConfig(
            durable_name=self.spec.durable, ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_SECONDS, max_ack_pending=max(1000, self.spec.batch),
        )
        return await js.pull_subscribe(self.spec.subject, durable=self.spec.durable,
                                       stream=self.spec.stream, config=config)

    async def _session(self) -> None:
        self._closing = False
        client = await self._connect()
        try:
            sub = await self._subscribe(client.jetstream())
            info = await sub.consumer_info()
            ack_wait = info.config.ack_wait or ACK_WAIT_SECONDS
            self.status.connected = True
            self.status.last_error = None
            log.info("NATS source consuming %s as durable %r", self._where(), self.spec.durable)
            while not self._stopping.is_set():
                if client.is_closed:
                    raise nats.errors.ConnectionClosedError
                if not await self._wait_for_backpressure():
                    return
                try:
                    messages = await sub.fetch(self.spec.batch, timeout=FETCH_TIMEOUT_SECONDS)
                except TimeoutError:  # nats-py raises its own or asyncio's: nothing came
                    continue
                await self._handle(client, messages, ack_wait)
        finally:
            self._closing = True
            with contextlib.suppress(Exception):
                if client.is_connected:
                    # Acks and naks are fire-and-forget; make sure the server has them.
                    await client.flush(timeout=2)
                await client.close()

    async def _wait_for_backpressure(self) -> bool:
        """Fetch nothing while ingest is closed; unfetched messages wait safely in JetStream.

        False if `stop()` was called meanwhile.
        """
        self.core.backpressure.update()
        while not self.core.backpressure.accepting:
            self.status.paused = True
            try:
                await self._sleep(PAUSE_SECONDS)
            except _Stopped:
                return False
            self.core.backpressure.update()
        self.status.paused = False
        return True

    # -- one batch -----------------------------------------------------------------------

    async def _handle(self, client: Client, messages: Sequence[Msg], ack_wait: float) -> None:
        """Parse, term the invalid, store the valid in one transaction, then ack them."""
        held: list[tuple[Msg, Event]] = []
        for message in messages:
            try:
                held.append((message, Event.model_validate_json(message.data)))
            except ValidationError as error:
                await self._terminate(message, "; ".join(map(str, field_errors(error))))
        if not held:
            return
        stored = await self._store_kept_alive(held, ack_wait)
        if not stored:
            return
        # Only now, after the commit: a crash before this line means redelivery, not loss.
        for message in stored:
            await message.ack()
        await client.flush()
        self.status.consumed += len(stored)

    async def _store_kept_alive(self, held: list[tuple[Msg, Event]],
                                ack_wait: float) -> list[Msg]:
        """`_store`, sending `in_progress` meanwhile: a held batch must not be redelivered."""
        messages = [message for message, _ in held]
        keepalive = asyncio.create_task(self._keep_alive(messages, ack_wait))
        try:
            return await self._store(held)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _store(self, held: list[tuple[Msg, Event]]) -> list[Msg]:
        """Append until committed; return the messages to ack ([] if stopped: all nak'd).

        Refused by back-pressure, the batch is held (in order, unacked, kept alive) and tried
        again once ingest accepts; any other failure is retried with backoff. An event the
        store can never take (over the size limit) is terminated like an invalid message.
        """
        backoff = BACKOFF_SECONDS[0]
        while held:
            try:
                await self.core.append([event for _, event in held])
            except RefusedError as error:
                log.info("NATS source holds %d messages: %s", len(held), error)
                if not await self._hold(held, PAUSE_SECONDS):
                    return []
                continue
            except EventTooLargeError as error:
                message, _ = held.pop(error.index)
                await self._terminate(message, f"event is {error.size} bytes serialized, "
                                               "over the store's limit")
                continue
            except Exception as error:  # noqa: BLE001 - any store failure: keep the batch, retry
                self.status.last_error = _describe(error)
                log.warning("NATS source could not store %d events (%s); retrying in %.1fs",
                            len(held), self.status.last_error, backoff)
                if not await self._hold(held, backoff):
                    return []
                backoff = min(backoff * 2, BACKOFF_SECONDS[1])
                continue
            return [message for message, _ in held]
        return []

    async def _hold(self, held: list[tuple[Msg, Event]], seconds: float) -> bool:
        """Wait `seconds`, then until back-pressure opens. If stopped, nak all and say False.

        Nak (not just drop) on stop, so the next consumer gets them at once rather than
        after `ack_wait`.
        """
        try:
            await self._sleep(seconds)
        except _Stopped:
            pass
        else:
            if await self._wait_for_backpressure():
                return True
        for message, _ in held:
            with contextlib.suppress(Exception):
                await message.nak()
        return False

    async def _keep_alive(self, messages: Sequence[Msg], ack_wait: float) -> None:
        """Tell JetStream the batch is still being worked on, so it is not redelivered."""
        while True:
            await asyncio.sleep(max(ack_wait / 3, 0.1))
            for message in messages:
                with contextlib.suppress(Exception):
                    await message.in_progress()

    async def _terminate(self, message: Msg, problem: str) -> None:
        """Log where an unusable message sits (never its content), count it, term it."""
        metadata = message.metadata
        log.warning(
            "NATS message terminated, not stored: subject %s, stream %s seq %d "
            "(delivery %d): %s", message.subject, metadata.stream, metadata.sequence.stream,
            metadata.num_delivered, problem,
        )
        self.invalid_total.inc()
        self.status.invalid += 1
        await message.term()
