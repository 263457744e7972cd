"""twlab: a packet-level lab for TCP connection teardown."""

__version__ = "0.1.0"
