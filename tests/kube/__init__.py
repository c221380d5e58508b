"""A Kubernetes API emulator for end-to-end tests, and the real kubectl to drive it.

`KubeEmulator` serves the wire protocol of kube-apiserver on loopback for the real operator and
the real kubectl (see `emulator.py`); `Kubectl` runs the real kubectl binary against it (see
`kubectl.py`).
"""

from tests.kube.emulator import KubeEmulator
from tests.kube.kubectl import KUBECTL, Kubectl

__all__ = ["KUBECTL", "KubeEmulator", "Kubectl"]
