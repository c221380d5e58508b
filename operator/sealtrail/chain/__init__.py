"""The tamper-evident log: canonical bytes, hashes, signed checkpoints, the store, verify."""
