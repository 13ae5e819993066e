"""HTTP/1.x on one connection, sans-I/O: ordered bytes of each direction in, ``(Event,
Transaction)`` pairs out (``shadowtap.wire.protocol`` says what a protocol gives the Extractor).

The public surface is this module's ``__all__`` (h11's layout): ``Conversation``, ``Event``,
``Transaction`` and ``PROTOCOL`` (the spec the Extractor picks it by). The private modules:
``_messages`` (states, the transaction, the message being parsed), ``_headers`` (header blocks
and framing fields), ``_parser`` (the two direction state machines and the pairing).
"""

from shadowtap.wire.http1._messages import Transaction
from shadowtap.wire.http1._parser import Conversation, make, sniff
from shadowtap.wire.protocol import Event, ProtocolSpec

__all__ = ["PROTOCOL", "Conversation", "Event", "Transaction"]

# make's Conversation is the protocol's (its events list holds http1 Transactions: a list is
# invariant, hence the ignore).
PROTOCOL = ProtocolSpec("http1", sniff, make)  # type: ignore[arg-type]
