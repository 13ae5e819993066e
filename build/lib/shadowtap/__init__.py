"""shadowtap: shadow deployment from the wire.

Capture HTTP traffic off a host's interface (eBPF or libpcap), rebuild the exchanges, replay the
requests to a shadow, compare the answers.
"""

__version__ = "0.1.0"
