"""The worker process: ingest API, status API, metrics, live reload, graceful drain."""
