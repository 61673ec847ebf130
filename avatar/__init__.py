"""Digital-human avatar streaming server."""

__version__ = "0.1.0"
