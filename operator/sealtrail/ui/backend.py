"""What the audit UI needs from whoever serves it: a worker, or `sealtrail ui` on a file.

Why a protocol and not the worker itself: the UI sits below the worker (the worker mounts it;
`sealtrail ui` runs it without one), so it may not import the worker. Everything it asks of
its host is here: who a token is, the exports' delivery state, resuming one, and appending
the UI's own audit events (`record`) through the host's normal append path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from sealtrail.api.worker_api import ExportReport
from sealtrail.chain.keys import PublicKey

__all__ = ["NotRecordedError", "UiBackend"]


class NotRecordedError(Exception):
    """The UI's audit event could not be stored, so the action it records is not done."""


class UiBackend(Protocol):
    """The host of the UI."""

    @property
    def store_path(self) -> Path:
        """The chain store the UI reads (read-only)."""

    @property
    def store_id(self) -> str | None:
        """The store's id (None for a store made before ids)."""

    @property
    def open(self) -> bool:
        """True when no token is asked for (the listener asks for none): everyone sees all."""

    def token_tenants(self) -> Sequence[tuple[str, list[str]]]:
        """Each ingest token as it reads now, with the tenant globs it may read.

        The UI digests them to match a session's token; a token that cannot be read is left
        out (and logged by the host), so its sessions stop working rather than open wider.
        """

    def exports(self) -> Sequence[ExportReport]:
        """Delivery state of every export (none for a store without a worker)."""

    def resume(self, name: str) -> bool:
        """Resume a paused export; False if there is none of that name."""

    def public_keys(self) -> Sequence[PublicKey]:
        """Keys that may have signed the store's checkpoints (none: signatures unchecked)."""

    def add_search_indexes(self) -> None:
        """Give the store the UI's search indexes (blocking; called once, in a thread)."""

    async def record(self, event_type: str, severity: str, action: str, identity: str,
                     extra: dict[str, str]) -> None:
        """Append one audit event to the `_system` chain; raise NotRecordedError if not."""
