"""What every backend is: the row it ships, its limits, and how it sends a batch.

A backend turns a batch of rows into one request in its protocol and classifies the answer
into an `Outcome`. It does not retry, sleep, split, pause or move cursors: the export loop does
all of that the same way for every SIEM. It must:

- carry each row exactly as stored (`ExportRow.body`, the canonical JSON bytes), and put
  anything the protocol needs (index, tags, signatures) beside the row, never into it;
- keep rows in the order given;
- use the dedupe key (`store_id:tenant_id:tenant_seq`, `record_hash`) where the protocol
  allows;
- never put a credential or a row's content into `Outcome.reason`.
"""

from __future__ import annotations

import abc
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sealtrail.api.export import ExportSpec
from sealtrail.export.credentials import Credential, CredentialError
from sealtrail.export.http import HttpClients
from sealtrail.export.outcome import Outcome

__all__ = [
    "Backend",
    "BatchLimits",
    "DestinationRule",
    "ExportRow",
    "TemplateError",
    "render_template",
]


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One stored row on its way out, with where its route sends it."""

    seq: int
    tenant_id: str
    tenant_seq: int
    record_hash: str
    event_type: str
    severity: str
    timestamp: str  # RFC 3339 UTC, as in the row
    body: bytes  # canonical row JSON, exactly as stored and hashed
    destination: str | None = None  # rendered index / stream for this row, if any
    sourcetype: str | None = None  # a route's Splunk sourcetype, if it sets one
    store_id: str | None = None  # the store that wrote it (None: made before stores had ids)

    @property
    def dedupe_key(self) -> str:
        """`store_id:tenant_id:tenant_seq`: the same row always has the same key.

        The store is part of it because every replica numbers its own chains from 1: two pods
        of a Deployment both write row 1 of tenant `payments`. Stores made before stores had
        ids give `tenant_id:tenant_seq`.
        """
        if self.store_id is None:
            return f"{self.tenant_id}:{self.tenant_seq}"
        return f"{self.store_id}:{self.tenant_id}:{self.tenant_seq}"


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """A protocol's hard limits on one request."""

    max_events: int
    max_bytes: int
    max_row_bytes: int  # one row larger than this is refused for good, never truncated


class TemplateError(ValueError):
    """A destination template can render a name the backend would refuse."""


@dataclass(frozen=True, slots=True)
class DestinationRule:
    """What a backend accepts as an index or stream name, and how values are made to fit.

    Substituted values (tenant ids, event types) are lowercased when the backend wants that and
    every character outside `allowed_chars` becomes `_`, so that a template that is valid for
    its literal parts is valid for every tenant: an illegal name is a config error, caught when
    the config is loaded, not a 400 at three in the morning.
    """

    what: str  # "Splunk index", for messages
    pattern: re.Pattern[str]  # a whole legal name
    allowed_chars: re.Pattern[str]  # one legal character
    lowercase: bool
    max_length: int


_VARIABLE: Final = re.compile(r"\$\{(tenant:id|event:type)\}")
_SAMPLES: Final = ({"tenant:id": "Acme.Corp-1", "event:type": "safety.decision"},
                   {"tenant:id": "_system", "event:type": "x.y"})


def _fit(value: str, rule: DestinationRule) -> str:
    if rule.lowercase:
        value = value.lower()
    return "".join(char if rule.allowed_chars.match(char) else "_" for char in value)


def render_template(template: str, row_tenant: str, row_type: str, rule: DestinationRule) -> str:
    """Substitute `${tenant:id}` and `${event:type}`, fitted to the backend's rule and length."""
    values = {"tenant:id": row_tenant, "event:type": row_type}
    rendered = _VARIABLE.sub(lambda match: _fit(values[match.group(1)], rule), template)
    return rendered[: rule.max_length]


def check_template(template: str, rule: DestinationRule) -> None:
    """Raise `TemplateError` if any tenant could make `template` render an illegal name."""
    unknown = re.findall(r"\$\{([^}]*)\}", _VARIABLE.sub("", template))
    if unknown:
        raise TemplateError(
            f"unknown variable ${{{unknown[0]}}}; use ${{tenant:id}} or ${{event:type}}"
        )
    if len(_VARIABLE.sub("", template)) > rule.max_length:
        raise TemplateError(f"{rule.what} {template!r} is longer than {rule.max_length}")
    for sample in _SAMPLES:
        rendered = render_template(template, sample["tenant:id"], sample["event:type"], rule)
        if not rule.pattern.fullmatch(rendered):
            raise TemplateError(
                f"{template!r} renders {rendered!r}, which is not a legal {rule.what}"
            )


class Backend(abc.ABC):
    """One SIEM protocol for one export."""

    #: Which `ExportSpec` block configures it.
    kind: str = ""
    #: Index/stream naming rule, or None if the protocol has no per-row destination.
    destination_rule: DestinationRule | None = None

    def __init__(self, spec: ExportSpec, clients: HttpClients) -> None:
        """Keep the spec and the shared HTTP clients; make no connection yet."""
        self.spec = spec
        self.clients = clients

    @property
    @abc.abstractmethod
    def limits(self) -> BatchLimits:
        """This protocol's hard limits (the loop also applies the export's own batch settings)."""

    @abc.abstractmethod
    def row_size(self, row: ExportRow) -> int:
        """Bytes `row` adds to a request, as the protocol counts them against `max_bytes`."""

    @abc.abstractmethod
    async def send(self, rows: Sequence[ExportRow]) -> Outcome:
        """Send one batch (in order) and classify the answer.

        Must not raise for I/O errors: a connection failure or a timeout is RETRYABLE.
        """

    def default_destination(self) -> str | None:
        """The export's own index/stream template, used when a route names none."""
        return None

    def credentials(self) -> list[Credential]:
        """The credentials this backend reads (for re-reading on AUTH, and for status)."""
        return []

    def refresh_credentials(self) -> None:
        """Re-read every credential from its source now (after an AUTH outcome)."""
        for credential in self.credentials():
            credential.value(force=True)

    def secrets(self) -> list[str]:
        """Every credential value this backend may send, in the forms it sends them.

        The loop removes each from whatever a peer answers (`credentials.redact`) before a
        reason reaches status, metrics or logs. A backend that combines values (Basic's
        `user:password`) adds the combination.
        """
        found = []
        for credential in self.credentials():
            with contextlib.suppress(CredentialError):
                value = credential.value()
                found.append(value)
                found.extend(value.split())  # e.g. both webhook secrets during a rotation
        return found

    def credential_version(self) -> str | None:
        """Short digest(s) of the credentials in use, for status; never the values."""
        versions = [version for c in self.credentials() if (version := c.version)]
        return ",".join(versions) if versions else None

    async def aclose(self) -> None:  # noqa: B027 - most backends have nothing of their own
        """Release what the backend holds of its own (shared HTTP clients are closed elsewhere)."""


def check_backend_templates(backend: type[Backend], templates: Sequence[str | None]) -> None:
    """Validate index/stream templates for a backend class at config time."""
    rule = backend.destination_rule
    for template in templates:
        if template is None:
            continue
        if rule is None:
            raise TemplateError(f"{backend.kind} has no index or stream to template")
        check_template(template, rule)
