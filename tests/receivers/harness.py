"""The contract between the export conformance suite and each SIEM's test receiver.

Every backend's tests provide a `ReceiverCase`: a receiver (real or protocol-faithful) that the
suite can start, take down, fail on purpose, re-key, and read back. The suite then runs the same
scenarios against all six: order and exactness, a receiver-side chain check, outage and
recovery, SIGKILL mid-batch, the failure table, self-pause, credential rotation.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Literal

from sealtrail.api.export import ExportSpec

Failure = Literal["retryable", "permanent", "auth"]


class ReceiverCase(abc.ABC):
    """One SIEM as the conformance suite sees it."""

    #: The backend kind, as in `ExportSpec`: "splunk", "elastic", ...
    kind: str
    #: Failures `fail_next` can inject. Syslog, for one, has no permanent answer to give.
    failures: frozenset[Failure] = frozenset({"retryable", "permanent", "auth"})
    #: True if the receiver keeps a row sent twice only once (Elastic `create` + `_id`).
    deduplicates: bool = False

    @abc.abstractmethod
    def start(self) -> None:
        """Start listening (on loopback)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Go down: further connections fail until `start` is called again."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop for good and release everything (processes, ports, files)."""

    @abc.abstractmethod
    def export_spec(self, name: str, credential_file: Path) -> ExportSpec:
        """An export to this receiver, its credential (if any) read from `credential_file`.

        The receiver accepts the credential in that file at the time of the call;
        `set_credential` changes what it accepts.
        """

    @abc.abstractmethod
    def set_credential(self, value: str) -> None:
        """Accept only `value` from now on (others get the protocol's auth failure)."""

    @abc.abstractmethod
    def fail_next(self, failure: Failure, count: int) -> None:
        """Answer the next `count` requests with the protocol's own form of this failure."""

    @abc.abstractmethod
    def received(self) -> list[bytes]:
        """Every row the SIEM holds, as canonical row bytes, in arrival order.

        Duplicates are kept, unless the SIEM itself deduplicates.
        """
