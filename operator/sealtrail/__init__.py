"""sealtrail: tamper-evident audit logs, shipped to the SIEMs security teams already run."""

__all__ = ["__version__"]

__version__ = "0.1.0"
