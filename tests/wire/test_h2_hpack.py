"""The HPACK decoder of a direction with a known start (``shadowtap/wire/http2/_hpack.py``)
against python-hyper's ``hpack.Decoder`` alone: blocks from ``hpack.Encoder`` (dynamic table,
Huffman or not, fields never indexed, table size changes) and blocks damaged anywhere decode to
the same fields, in the same order (and the same judgement of a watched, secret name), with an
error exactly where the library raises one, while
the caches (whole blocks, and single representations of blocks that leave the table as it is)
serve repeats."""

from __future__ import annotations

import hpack
from hpack import Encoder, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as hs

from shadowtap.wire.http2._hpack import MAX_HEADER_LIST, HeaderDecoder, _text

NAMES = [":path", ":method", "content-type", "x-request-id", "grpc-timeout", "te", "authorization"]
WATCH = frozenset({"authorization"})
field = hs.tuples(
    hs.sampled_from(NAMES), hs.sampled_from(["", "1", "abc", "/pkg.S/M", "x" * 30, "é", "y" * 200])
)


def reference(blocks):
    """What the library alone gives for each block: the fields, or None after an error (and
    the direction is then unknown: nothing after it is compared)."""
    lib = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
    out = []
    for block in blocks:
        try:
            fields = _text(lib.decode(block, raw=True))
            out.append((fields, any(n in WATCH for n, _ in fields)))
        except hpack.HPACKError:
            out.append(None)
            break
    return out


def ours(blocks):
    dec = HeaderDecoder(known_start=True, watch=WATCH)
    out = []
    for block in blocks:
        got = dec.decode(block)
        out.append(None if got.error is not None else (got.fields, got.secret))
        if got.error is not None:
            break
    return out


@hs.composite
def conversation(draw):
    """Header blocks of one direction as an encoder writes them: repeated heads with one field
    changing (a request id, sent with or without indexing), table size changes, damage."""
    enc = Encoder()
    enc.huffman = draw(hs.booleans())
    blocks = []
    base = draw(hs.lists(field, min_size=1, max_size=6))
    for i in range(draw(hs.integers(1, 12))):
        heads = list(base)
        if draw(hs.booleans()):
            rid = ("x-request-id", str(i) + draw(hs.sampled_from(["", "z" * 130])))
            heads.append(NeverIndexedHeaderTuple(*rid) if draw(hs.booleans()) else rid)
        if draw(hs.integers(0, 5)) == 0:
            heads += draw(hs.lists(field, max_size=3))
        if draw(hs.integers(0, 8)) == 0:
            enc.header_table_size = draw(hs.sampled_from([0, 64, 256, 4096]))
        block = enc.encode(heads, huffman=enc.huffman)
        if draw(hs.integers(0, 10)) == 0:  # damage: a byte changed, or the block cut
            k = draw(hs.integers(0, max(0, len(block) - 1)))
            if draw(hs.booleans()):
                block = block[:k] + bytes([draw(hs.integers(0, 255))]) + block[k + 1 :]
            else:
                block = block[:k]
        blocks.append(block)
        if draw(hs.booleans()):
            blocks.append(block)  # a repeat: the caches answer it
    return blocks


@settings(max_examples=300, deadline=None)
@given(conversation())
def test_same_fields_as_the_library(blocks):
    assert ours(blocks) == reference(blocks)


def test_a_request_id_sent_without_indexing_needs_no_library_decode():
    enc = Encoder()
    base = [(":method", "POST"), (":path", "/pkg.S/M"), ("content-type", "application/grpc")]
    blocks = [
        enc.encode(
            [*base, NeverIndexedHeaderTuple("x-request-id", str(i) + "r" * (150 * (i % 2)))],
            huffman=bool(i % 3),  # ids of 150 bytes and more: a length of two bytes
        )
        for i in range(50)
    ]
    dec = HeaderDecoder(known_start=True)
    calls = []
    lib = dec._lib
    real = lib.decode
    lib.decode = lambda b, raw=False: calls.append(len(b)) or real(b, raw=raw)  # type: ignore[method-assign]
    got = [dec.decode(b).fields for b in blocks]
    assert [(f, False) for f in got] == reference(blocks)
    # The first block is decoded whole by the library (it inserts the base fields); every later
    # one reads its indexed fields from the table and the new id with the library's integer and
    # Huffman decoders.
    assert len(calls) == 1


def test_what_the_one_pass_reader_does_not_take_goes_to_the_library():
    """An index out of range, a truncated or bad Huffman string, a table above the setting: the
    library decodes the block and names the error (the same text as the library's alone)."""
    enc = Encoder()
    first = enc.encode([(":path", "/a"), ("x-id", "1")])
    cases = [
        b"\xfe",  # indexed 126: beyond the table
        b"\x80",  # index 0
        b"\x00\x04ab",  # a literal name longer than the block
        b"\x00\x81\xff\x01a",  # a one-byte Huffman name that decodes to nothing valid
        b"\x0f\x7f",  # a name index continued past the end
    ]
    for bad in cases:
        dec = HeaderDecoder(known_start=True)
        dec.decode(first)
        ref = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        ref.decode(first)
        try:
            ref.decode(bad)
        except hpack.HPACKError as exc:
            expected = f"hpack: {exc}"
        else:
            raise AssertionError(f"the library took {bad!r}")
        assert dec.decode(bad).error == expected, bad
    dec = HeaderDecoder(known_start=True)
    dec.decode(first)
    dec._lib.max_allowed_table_size = 0  # an encoder that did not shrink its table after SETTINGS
    assert dec._lib.header_table_size > 0
    assert dec.decode(b"\x82").error == "hpack: Encoder did not shrink table size to within the max"
