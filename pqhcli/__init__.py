"""`pqh`, the command line for pqh's HTTP API."""

__version__ = "0.1.0"
