"""`sealtrail operator`: kopf in every replica (indexes, the webhook), one leader reconciling.

kopf runs standalone (no kopf peering: a paused follower would stop the watches its webhook
answers from); which replica writes to the cluster is decided by a Lease (`leader.py`).
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
    kopf.run(
        registry=build_registry(config),
        standalone=True,
        namespaces=list(config.namespaces),
        clusterwide=not config.namespaces,
        memo=kopf.Memo(),
    )
    return 0
