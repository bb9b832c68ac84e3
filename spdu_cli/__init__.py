"""spdu: keep a DNS pool honest for a service spread over independent sites."""

__version__ = "0.4.1"
