"""Kubernetes: the CRDs, the pure planners that turn resources into objects, and the operator."""
