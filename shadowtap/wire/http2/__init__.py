"""HTTP/2 (h2c) observed passively: reassembled bytes of each direction in, one exchange per stream
out. The public surface is re-exported from private modules (h11 style).

What is decoded: frames (python-hyper's ``hyperframe``), header blocks with HPACK (``hpack``; one
decoder per direction, bounded by the decoding side's SETTINGS_HEADER_TABLE_SIZE), CONTINUATION
and padding, request and response heads, DATA and trailers per stream, interim 1xx skipped,
RST_STREAM and GOAWAY as outcomes, PUSH_PROMISE decoded for its table insertions and otherwise
ignored (``h2_push_ignored``). Flow control is not needed to observe. gRPC calls are split into
messages (``shadowtap.wire.grpc``).

Joining mid-connection: frame boundaries are found again (a run of plausible frame headers),
the HPACK dynamic table's older entries are unknown; fields that reference them are left out and
the stream is marked ``h2_headers_undecodable``, never guessed. A stream whose ``:path`` is lost
is kept when its DATA reads as gRPC messages (``h2_path_unknown``), else counted and dropped.

``Upgrade: h2c`` from HTTP/1.1: the Extractor hands the connection over when HTTP/1.x parsed the
``101`` (``wire.protocol.Switch``); ``upgraded`` makes the parser, the upgraded request stream 1.
"""

from shadowtap.wire.http2 import _conversation
from shadowtap.wire.http2._conversation import *  # noqa: F403
from shadowtap.wire.http2._frames import PREFACE, looks_like_frames
from shadowtap.wire.protocol import ProtocolSpec

__all__ = ["PROTOCOL", "PREFACE", "looks_like_frames"]
__all__ += _conversation.__all__

# The spec the Extractor picks HTTP/2 by (before HTTP/1.x, which takes what no other claims).
# ``Upgrade: h2c`` from HTTP/1.1 hands a connection over to it (``upgraded``).
PROTOCOL = ProtocolSpec("h2", sniff, make, "h2c", upgraded)  # noqa: F405 - from _conversation
