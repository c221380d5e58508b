"""The worker's NATS JetStream source, against a real `nats-server -js` on loopback.

Covers: every valid published event is stored in publish order and acked (nothing left pending
or redelivered), the durable consumer being created by the source when missing; a crash after
the commit but before the ack (the source task killed right there) loses nothing: on restart
the unacked batch is redelivered and stored again (duplicates, never gaps) and the chain still
verifies; invalid messages (bad JSON, unknown or missing fields, over the size limit) are
terminated, counted in `sealtrail_audit_nats_invalid_total` and logged without their content,
while valid messages around them are stored; with back-pressure closed the source fetches
nothing until it opens, then everything arrives; a batch refused by back-pressure is held
unacked (kept alive, not redelivered) and stored exactly once when ingest accepts again, and
nak'd for prompt redelivery if the source stops while holding it; a missing stream is
reported, not created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats
import nats.js.errors
import orjson
import pytest
import yaml
from nats.aio.client import Client
from nats.js import api
from prometheus_client import CollectorRegistry

from sealtrail.api.worker_config import NatsSpec, StoreSpec, WorkerConfig
from sealtrail.chain.verify import Status, verify_store
from sealtrail.worker.backpressure import RefusedError
from sealtrail.worker.core import WorkerCore
from sealtrail.worker.nats_source import NatsSource

from .worker_process import running_worker

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
STREAM = "AUDIT"
SUBJECT = "audit.events"
DURABLE = "sealtrail"
SECRET = "TOPSECRET-payload-marker"  # noqa: S105 - a marker that must never reach a log

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not Path(NATS_SERVER).exists(), reason="nats-server is not installed"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A JetStream-enabled nats-server of our own, on a free loopback port."""
    port = free_port()
    log = (tmp_path / "nats-server.log").open("wb")
    server = subprocess.Popen(
        [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "js")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert server.poll() is None, (tmp_path / "nats-server.log").read_text()
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()


def event(number: int, tenant: str = "acme") -> bytes:
    return orjson.dumps({"event_type": "safety.decision", "severity": "INFO",
                         "tenant_id": tenant, "job_id": f"job-{number:04d}"})


def make_core(tmp_path: Path, url: str, *, batch: int = 10, stream: str = STREAM) -> WorkerCore:
    config = WorkerConfig(
        store=StoreSpec(path=str(tmp_path / "audit.db")),
        nats=NatsSpec(url=url, stream=stream, subject=SUBJECT, durable=DURABLE, batch=batch),
    )
    core = WorkerCore(config, CollectorRegistry())
    core.start()
    return core


def stored_jobs(core: WorkerCore) -> list[str]:
    return [orjson.loads(row)["job_id"] for row in core.store.rows()]


async def until(condition: Callable[[], bool | Awaitable[bool]], seconds: float = 8.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def jetstream(url: str, *, ack_wait: float | None = 1.0) -> AsyncIterator[Client]:
    """A client, with the stream made and, given `ack_wait`, the durable pre-made.

    A short `ack_wait` makes a redelivery show within a test.
    """
    client = await nats.connect(url)
    js = client.jetstream()
    await js.add_stream(name=STREAM, subjects=[SUBJECT])
    if ack_wait is not None:
        await js.add_consumer(STREAM, config=api.ConsumerConfig(
            durable_name=DURABLE, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ack_wait,
            filter_subject=SUBJECT))
    try:
        yield client
    finally:
        await client.close()


async def publish(client: Client, payloads: list[bytes]) -> None:
    js = client.jetstream()
    for payload in payloads:
        await js.publish(SUBJECT, payload)


async def consumer(client: Client) -> api.ConsumerInfo:
    info = await client.jetstream().consumer_info(STREAM, DURABLE)
    assert isinstance(info, api.ConsumerInfo)
    return info


def deliveries(info: api.ConsumerInfo) -> int:
    """Deliveries so far, redeliveries included (the consumer sequence)."""
    assert info.delivered is not None
    return info.delivered.consumer_seq


def fetched_up_to(info: api.ConsumerInfo) -> int:
    """The highest stream sequence ever delivered."""
    assert info.delivered is not None
    return info.delivered.stream_seq


@contextlib.asynccontextmanager
async def running(source: NatsSource) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run())
    try:
        yield task
    finally:
        source.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def close(core: WorkerCore) -> None:
    await core.drain_and_stop(1.0)


def test_valid_events_stored_in_publish_order_and_acked(tmp_path: Path, nats_url: str) -> None:
    async def scenario() -> None:
        core = make_core(tmp_path, nats_url, batch=10)
        async with jetstream(nats_url, ack_wait=None) as client:  # the source makes the durable
            expected = [f"job-{n:04d}" for n in range(25)]
            await publish(client, [event(n) for n in range(25)])
            source = NatsSource(core, core.config.nats)  # type: ignore[arg-type]
            async with running(source):
                await until(lambda: source.status.consumed == 25)
                assert source.status.connected
                info = await consumer(client)
            assert stored_jobs(core) == expected
            assert info.config.durable_name == DURABLE
            assert info.num_ack_pending == 0
            assert info.num_pending == 0
            assert deliveries(info) == 25  # each delivered once: no redelivery
            assert info.ack_floor is not None
            assert info.ack_floor.stream_seq == 25
            assert source.status.invalid == 0
            assert source.status.last_error is None
            # Published while running, too: still in order after the first batch.
            async with running(NatsSource(core, core.config.nats)):  # type: ignore[arg-type]
                await publish(client, [event(n) for n in range(25, 40)])
                await until(lambda: core.last_seq == 40)
            assert stored_jobs(core) == [f"job-{n:04d}" for n in range(40)]
        await close(core)
        assert verify_store(tmp_path / "audit.db").status is Status.INTACT

    asyncio.run(scenario())


def test_crash_between_commit_and_ack_redelivers_and_loses_nothing(
    tmp_path: Path, nats_url: str
) -> None:
    async def scenario() -> None:
        core = make_core(tmp_path, nats_url, batch=10)
        async with jetstream(nats_url, ack_wait=1.0) as client:
            await publish(client, [event(n) for n in range(25)])
            source = NatsSource(core, core.config.nats)  # type: ignore[arg-type]
            real_append = core.append
            crashed: list[str] = []
            task: asyncio.Task[None] | None = None

            async def append_then_crash(events):  # type: ignore[no-untyped-def]
                stored = await real_append(events)  # committed ...
                crashed.extend(item.job_id for item in events)
                assert task is not None
                task.cancel()  # ... and the process dies before a single ack
                await asyncio.sleep(3600)
                return stored

            core.append = append_then_crash  # type: ignore[method-assign]
            task = asyncio.create_task(source.run())
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
            assert len(crashed) == 10
            assert stored_jobs(core) == crashed  # stored, but ...
            info = await consumer(client)
            assert info.num_ack_pending == 10  # ... never acked
            assert source.status.consumed == 0

            del core.append  # the restarted worker appends normally
            restarted = NatsSource(core, core.config.nats)  # type: ignore[arg-type]
            async with running(restarted):
                async def settled() -> bool:
                    info = await consumer(client)
                    # Nothing left unacked means the crashed batch came back and was acked.
                    return info.num_ack_pending == 0 and info.num_pending == 0
                await until(settled)
                info = await consumer(client)
            assert deliveries(info) == 35  # 25 deliveries + 10 redeliveries
            counts = Counter(stored_jobs(core))
            assert set(counts) == {f"job-{n:04d}" for n in range(25)}  # at least once each
            duplicated = {job for job, count in counts.items() if count > 1}
            assert duplicated <= set(crashed)  # only what was committed but not acked repeats
            assert all(counts[job] >= 2 for job in crashed)  # and it did come back
        await close(core)
        assert verify_store(tmp_path / "audit.db").status is Status.INTACT

    asyncio.run(scenario())


def test_invalid_messages_are_terminated_counted_and_never_block(
    tmp_path: Path, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sealtrail.worker.nats")
    oversized = orjson.dumps({
        "event_type": "safety.decision", "severity": "INFO", "job_id": "job-big",
        "extra": {f"k{n}": SECRET + "x" * 7000 for n in range(40)},
    })
    payloads = [
        event(0),
        b"{not json " + SECRET.encode(),
        event(1),
        orjson.dumps({"event_type": "safety.decision", "severity": "INFO", "decison": SECRET}),
        event(2),
        orjson.dumps({"event_type": "safety.decision", "job_id": SECRET}),
        oversized,
        event(3),
    ]

    async def scenario() -> None:
        core = make_core(tmp_path, nats_url, batch=4)
        async with jetstream(nats_url, ack_wait=1.0) as client:
            await publish(client, payloads)
            source = NatsSource(core, core.config.nats)  # type: ignore[arg-type]
            async with running(source):
                await until(lambda: source.status.consumed + source.status.invalid == 8)
                await asyncio.sleep(1.5)  # past ack_wait: a terminated message would be back
                info = await consumer(client)
                assert source.status.invalid == 4
            assert stored_jobs(core) == ["job-0000", "job-0001", "job-0002", "job-0003"]
            assert core.registry.get_sample_value("sealtrail_audit_nats_invalid_total") == 4
            assert info.num_ack_pending == 0
            assert info.num_pending == 0
            assert deliveries(info) == 8  # past ack_wait, and none came back
        await close(core)

    asyncio.run(scenario())
    terminated = [r.getMessage() for r in caplog.records if "terminated" in r.getMessage()]
    assert len(terminated) == 4
    assert all(SECRET not in message for message in terminated)
    assert SECRET not in caplog.text
    assert all(f"subject {SUBJECT}, stream {STREAM} seq" in message for message in terminated)
    assert any("seq 2 " in message and "Invalid JSON" in message for message in terminated)
    assert any("seq 4 " in message and "decison: is not a field" in message
               for message in terminated)
    assert any("seq 6 " in message and "severity: is required" in message
               for message in terminated)
    assert any("seq 7 " in message and "over the store's limit" in message
               for message in terminated)


def test_closed_backpressure_stops_pulling_until_it_opens(tmp_path: Path, nats_url: str) -> None:
    async def scenario() -> None:
        core = make_core(tmp_path, nats_url, batch=5)
        core.backpressure._lag = lambda: 10**9  # exports hopelessly behind
        async with jetstream(nats_url, ack_wait=1.0) as client:
            await publish(client, [event(n) for n in range(12)])
            source = NatsSource(core, core.config.nats)  # type: ignore[arg-type]
            async with running(source):
                await until(lambda: source.status.paused)
                await asyncio.sleep(1.5)
                info = await consumer(client)
                assert fetched_up_to(info) == 0  # not one message fetched
                assert info.num_pending == 12
                assert info.num_ack_pending == 0
                assert source.status.consumed == 0
                assert core.last_seq == 0
                core.backpressure._lag = lambda: 0  # the exports caught up
                await until(lambda: source.status.consumed == 12)
                assert not source.status.paused
                info = await consumer(client)
            assert stored_jobs(core) == [f"job-{n:04d}" for n in range(12)]
            assert info.num_ack_pending == 0
            assert deliveries(info) == 12
        await close(core)

    asyncio.run(scenario())


def refuse_while(core: WorkerCore, refusing: Callable[[], bool]) -> list[int]:
    """Make back-pressure refuse (as in `reject` mode) while `refusing()`; count refusals."""
    real_admit = core.backpressure.admit
    refusals = [0]

    async def admit(size_hint: int = 0) -> None:
        if refusing():
            refusals[0] += 1
            raise RefusedError(1, 10**9)
        await real_admit(size_hint)

    core.backpressure.admit = admit  # type: ignore[method-assign]
    return refusals


def test_refused_batch_is_held_unacked_then_stored_once(tmp_path: Path, nats_url: str) -> None:
    async def scenario() -> None:
        core = make_core(tmp_path, nats_url, batch=10)
        refusing = True
        refusals = refuse_while(core, lambda: refusing)
        async with jetstream(nats_url, ack_wait=1.0) as client:
            await publish(client, [event(n) for n in range(5)])
            source = NatsSource(core, core.config.nats)  # type: ignore[arg-type]
            async with running(source):
                await until(lambda: refusals[0] >= 2)
                await asyncio.sleep(1.5)  # past ack_wait: kept alive, so not redelivered
                info = await consumer(client)
                assert info.num_ack_pending == 5  # held, not acked
                assert deliveries(info) == 5  # and not redelivered
                assert core.last_seq == 0
                assert source.status.consumed == 0
                refusing = False
                await until(lambda: source.status.consumed == 5)
                info = await consumer(client)
            assert stored_jobs(core) == [f"job-{n:04d}" for n in range(5)]  # once, in order
            assert info.num_ack_pending == 0
            assert deliveries(info) == 5
        await close(core)
        assert verify_store(tmp_path / "audit.db").status is Status.INTACT

    asyncio.run(scenario())


def test_stop_while_holding_naks_for_prompt_redelivery(tmp_path: Path, nats_url: str) -> None:
    async def scenario() -> None:
        core = make_core(tmp_path, nats_url, batch=10)
        refusing = True
        refusals = refuse_while(core, lambda: refusing)
        async with jetstream(nats_url, ack_wait=10.0) as client:  # long: only a nak is quick
            await publish(client, [event(n) for n in range(3)])
            async with running(NatsSource(core, core.config.nats)):  # type: ignore[arg-type]
                await until(lambda: refusals[0] >= 1)
            assert core.last_seq == 0
            refusing = False
            started = time.monotonic()
            async with running(NatsSource(core, core.config.nats)):  # type: ignore[arg-type]
                await until(lambda: core.last_seq == 3, seconds=5)
                info = await consumer(client)
            assert time.monotonic() - started < 5  # well before ack_wait would redeliver
            assert deliveries(info) == 6  # 3 delivered, nak'd, 3 redelivered
            assert stored_jobs(core) == [f"job-{n:04d}" for n in range(3)]
        await close(core)

    asyncio.run(scenario())


def test_missing_stream_is_reported_not_created(tmp_path: Path, nats_url: str) -> None:
    async def scenario() -> None:
        core = make_core(tmp_path, nats_url, stream="NOSUCH")
        async with jetstream(nats_url, ack_wait=None) as client:
            source = NatsSource(core, core.config.nats)  # type: ignore[arg-type]
            async with running(source) as task:
                await until(lambda: "does not exist" in (source.status.last_error or ""))
                assert "NOSUCH" in (source.status.last_error or "")
                source.stop()
                await asyncio.wait_for(asyncio.shield(task), 3)  # stops promptly while retrying
            with pytest.raises(nats.js.errors.NotFoundError):
                await client.jetstream().stream_info("NOSUCH")
        await close(core)

    asyncio.run(scenario())


def test_a_nats_block_added_to_a_running_workers_config_starts_consuming(
        tmp_path: Path, nats_url: str) -> None:
    async def publish_ten() -> None:
        async with jetstream(nats_url, ack_wait=None) as client:
            await publish(client, [event(n) for n in range(10)])

    with running_worker(tmp_path / "worker") as worker:
        pid = worker.pid
        asyncio.run(publish_ten())
        time.sleep(0.5)
        assert worker.row_count() == 0  # no source yet
        config = {**worker.config, "nats": {"url": nats_url, "stream": STREAM,
                                             "subject": SUBJECT, "durable": DURABLE}}
        fresh = worker.config_path.with_suffix(".new")
        fresh.write_text(yaml.safe_dump(config), encoding="utf-8")
        fresh.replace(worker.config_path)  # as the kubelet swaps a ConfigMap's file
        deadline = time.monotonic() + 20
        while worker.row_count() < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker.row_count() == 10, worker.log()
        assert worker.pid == pid
        assert worker.alive()
        assert "NATS source restarted" in worker.log()
        jobs = [row["job_id"] for row in worker.rows()]
        assert jobs == [f"job-{n:04d}" for n in range(10)]
