"""The audit UI: find, read, verify and export audit events in a browser (see `app.py`)."""
