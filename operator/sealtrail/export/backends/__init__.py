"""One module per SIEM protocol.

A backend imports `api` and the shared plumbing in `export/`, never the store, the worker or
another backend.
"""
