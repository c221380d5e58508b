"""`ObjectRef`: which object, by kind, namespace and name (what planners hand to `kube`).

Its own module so that the pure planners and the API writer can share it without either
importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ObjectRef"]


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """An object of a kind `kube.Kube` manages (`StatefulSet`, `Service`, `Secret`, ...)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        """`kind namespace/name`, as messages name objects."""
        return f"{self.kind} {self.namespace}/{self.name}"
