"""Pydantic models: the one source of truth for what sealtrail accepts. Imports nothing of ours."""
