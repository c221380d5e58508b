"""A Kubernetes API emulator for end-to-end tests, and the real kubectl to drive it.

`tests.kube.emulator.KubeEmulator` serves the wire protocol of kube-apiserver on loopback for the
real operator and the real kubectl; `tests.kube.kubectl.Kubectl` runs the real kubectl binary
against it. (Nothing is imported here, so that `python -m tests.kube.emulator` runs cleanly.)
"""
