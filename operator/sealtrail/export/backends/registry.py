"""Which class implements which backend kind (imported lazily: boto3 is slow to import)."""

from __future__ import annotations

import importlib
from typing import Final

from sealtrail.export.backends.base import Backend

__all__ = ["backend_class"]

_CLASSES: Final = {
    "splunk": ("sealtrail.export.backends.splunk", "SplunkBackend"),
    "elastic": ("sealtrail.export.backends.elastic", "ElasticBackend"),
    "datadog": ("sealtrail.export.backends.datadog", "DatadogBackend"),
    "webhook": ("sealtrail.export.backends.webhook", "WebhookBackend"),
    "syslog": ("sealtrail.export.backends.syslog", "SyslogBackend"),
    "cloudwatch": ("sealtrail.export.backends.cloudwatch", "CloudWatchBackend"),
}


def backend_class(kind: str) -> type[Backend]:
    """The `Backend` subclass for `kind`."""
    module, name = _CLASSES[kind]
    found: type[Backend] = getattr(importlib.import_module(module), name)
    return found
