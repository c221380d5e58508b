"""Shipping the chain to SIEMs: the export loop, batching, outcome classes, routing, backends."""
