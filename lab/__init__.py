"""twlab: a packet-level lab for TCP connection teardown."""

from lab import accel as _accel

__version__ = "0.1.0"

# before any compiled module loads: a stale or unwanted (TWLAB_PURE=1) build must not shadow the .py sources
_accel.install()
