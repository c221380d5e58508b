"""The kopf side of the operator: indexes, event hooks, the webhook. Thin, and writing nothing.

kopf watches AuditExports, AuditPolicies and pods, and keeps what the planners need in
in-memory indexes (`register_indexes`). It has no change handlers and no timers: those keep
progress in annotations and put a finalizer on every object, so `helm uninstall` would leave
objects no one can delete, and two replicas would fight over them. Instead an event on an
export or policy tells the leader's controller (`controller.py`) which namespace to reconcile,
and the webhook (`injection.py`) answers from the same indexes in every replica.

`runtime.py` builds what runs beside kopf (the Lease, the controller, the Secret reader, the
webhook certificate, the probe port) at start-up and stops it at clean-up.
"""

from __future__ import annotations

import kopf

from sealtrail.operator.config import OperatorConfig
from sealtrail.operator.handlers.indexes import register_indexes
from sealtrail.operator.handlers.injection import register_injection
from sealtrail.operator.handlers.runtime import register_runtime

__all__ = ["build_registry"]


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """Every handler of the operator, on a registry of its own (no import-time globals)."""
    registry = kopf.OperatorRegistry()
    register_runtime(registry, config)
    register_indexes(registry)
    if config.webhook is not None:
        register_injection(registry, config)
    return registry
