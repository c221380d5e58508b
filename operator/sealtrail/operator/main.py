"""`sealtrail operator`: run the handlers under kopf, standalone (one replica, no peering).

The chart runs one replica with the `Recreate` strategy, so two operators never act at once;
kopf's peering (which needs its own CRDs) is therefore off.
"""

from __future__ import annotations

import logging
import os

import kopf

from sealtrail.operator.config import OperatorConfig
from sealtrail.operator.handlers import build_registry

__all__ = ["run_operator"]


def run_operator(config: OperatorConfig) -> int:
    """Run until SIGTERM/SIGINT; return the exit status."""
    logging.basicConfig(level=os.environ.get("SEALTRAIL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    liveness = (f"http://0.0.0.0:{config.liveness_port}/healthz"
                if config.liveness_port is not None else None)
    kopf.run(
        registry=build_registry(config),
        standalone=True,
        namespaces=list(config.namespaces),
        clusterwide=not config.namespaces,
        liveness_endpoint=liveness,
        memo=kopf.Memo(),
    )
    return 0
