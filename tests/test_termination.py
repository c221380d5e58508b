"""The drain follows the time the pod actually has left, counted from its preStop hook.

The kubelet counts one grace period for the whole pod from the moment it starts stopping it,
and a native sidecar gets SIGTERM only after the app has exited. These run the real worker: a
preStop call naming the grace, then SIGTERM some seconds later, and the drain ends when the
grace does (less the safety margin) if that comes before `drainTimeoutSeconds` after the
SIGTERM; without the call, it is `drainTimeoutSeconds` as before; a stale call is not believed.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from sealtrail.worker.termination import SAFETY_SECONDS, TerminationClock

from .worker_process import free_port, running_worker


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_clock_counts_from_the_first_pre_stop_call() -> None:
    clock = _Clock()
    termination = TerminationClock(clock)
    assert termination.time_left(20)[0] == 20  # no call: drainTimeoutSeconds
    assert termination.begin(60)
    clock.now += 10
    assert not termination.begin(600)  # a second call moves nothing
    assert termination.time_left(20)[0] == 20  # the grace leaves more: never past the setting
    clock.now += 35  # a slow app used most of the grace
    left, why = termination.time_left(20)
    assert left == 60 - 45 - SAFETY_SECONDS
    assert "what the pod's grace leaves: 60 s" in why
    clock.now += 100  # a call whose grace is long over was not this termination's
    left, why = termination.time_left(20)
    assert left == 20
    assert "already over" in why


def _undeliverable(tmp_path: Path, admin_port: int) -> dict[str, object]:
    """An export to a port nothing listens on: the drain can never finish early."""
    return {"exports": [{"name": "down", "webhook": {
        "url": f"http://127.0.0.1:{free_port()}/", "secret": {"file": str(tmp_path / "s")}},
        "retry": {"initialBackoffMs": 50, "maxBackoffMs": 200}}],
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "drainTimeoutSeconds": 8}


@pytest.mark.parametrize("pre_stop", [True, False])
def test_the_drain_ends_when_the_pods_grace_does(tmp_path: Path, pre_stop: bool) -> None:
    (tmp_path / "s").write_text("x" * 32)
    admin = free_port()
    with running_worker(tmp_path, **_undeliverable(tmp_path, admin)) as worker:
        answer = httpx.post(f"{worker.url}/v1/events", json=[
            {"event_type": "system.auth", "severity": "INFO"}], timeout=10)
        assert answer.status_code == 200
        if pre_stop:
            began = httpx.get(f"http://127.0.0.1:{admin}/v1/lifecycle/pre-stop?grace=9",
                              timeout=5)
            assert began.json() == {"grace_seconds": 9}
        time.sleep(2)  # the app shutting down meanwhile
        start = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(timeout=30)
        took = time.monotonic() - start
        log = worker.log()
    if pre_stop:
        # 9 s from the call, 2 s gone, 2 s kept to exit: about 5 s of drain, not the 8 s of
        # drainTimeoutSeconds, which would have run past the pod's grace.
        assert 4.0 <= took <= 7.0, log
        assert "what the pod's grace leaves: 9 s" in log
    else:
        assert 7.5 <= took <= 10.5, log  # drainTimeoutSeconds: 8
        assert "no preStop call" in log


def test_a_bad_grace_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    admin = free_port()
    with running_worker(tmp_path, admin={"listen": f"127.0.0.1:{admin}"}) as worker:
        for bad in ("", "abc", "0", "-5", "86401", "1e3"):
            answer = httpx.get(f"http://127.0.0.1:{admin}/v1/lifecycle/pre-stop?grace={bad}",
                               timeout=5)
            assert answer.status_code == 400, bad
            assert "grace must be a whole number of seconds" in answer.json()["error"]
        assert httpx.get(f"{worker.url}/readyz", timeout=5).status_code == 200
        worker.stop()
        assert "no preStop call" in worker.log()  # a refused call started no clock
