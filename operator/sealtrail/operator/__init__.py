"""The operator: CRD generation, pure planners (resources to objects, worker config), kopf.

It imports `api` only: it renders config and reads worker status, and never opens a store or
ships rows (an import-linter contract holds it to that).
"""
