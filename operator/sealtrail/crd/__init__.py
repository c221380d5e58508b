"""Build-time tooling: CRD manifests and their reference, generated from the api models."""
