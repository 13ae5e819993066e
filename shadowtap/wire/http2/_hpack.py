"""HPACK decoding for a passive observer: one ``HeaderDecoder`` per direction.

Two modes, one interface:

- **Known start** (the capture saw the connection's preface, or the dynamic table was emptied by a
  size update to 0): python-hyper's ``hpack.Decoder`` does the work, its table bounded by the
  decoding side's SETTINGS_HEADER_TABLE_SIZE. It raises on any violation (index out of range, bad
  Huffman, a size update beyond the setting); the error is reported and the direction falls back
  to the passive mode below, because a block that failed halfway leaves the table in an unknown
  state (entries it would have inserted are missing, so every later position is unsure).
- **Passive** (joined mid-connection, after a gap or an HPACK error): the dynamic table's older
  entries are unknown. HPACK's table is FIFO and a position counts from the newest entry, so the
  entries inserted since the capture began sit at known positions whatever was evicted before
  them: index ``62 + i`` is the i-th most recent insertion seen, exactly, as long as i is below
  the number of insertions seen. Anything deeper is an unknown entry: the field is reported as
  undecodable (its name when the name alone is known), never guessed. The static table, literals
  and Huffman strings always decode. A size update to 0 empties the table: from then on the
  direction is fully known again and goes back to ``hpack.Decoder``.

Caches and a fast path (known start): a block that left the table unchanged is kept whole while
the table stays so (gRPC heads and trailers repeat byte for byte). A block whose every
representation leaves the table alone (indexed fields, literals without indexing: RFC 7541 6.1,
6.2.2, 6.2.3) is read in one pass with the library's own table, integer and Huffman decoders
(``_decode_neutral``), each run of indexed fields turned into text once while the table is
unchanged, so a head that differs from the last only in a field sent without indexing (a request
id) costs a lookup plus that field's strings (a grpcio request head: ~2 us, against ~7 us through
``Decoder.decode`` by pieces and ~12 us whole). That pass is a second reader of those three
representations beside the library's (a choice for speed, bounded): anything it does not take as
is (an insertion, a size update, an index out of range, a truncated string, bad Huffman, a header
list over the bound) goes to ``hpack.Decoder`` whole, which decodes it or names the error;
tests/wire/test_h2_hpack.py holds the results equal to the library's alone on any blocks, damaged
or not.

Decoding is O(block size); the passive table keeps at most ``_PASSIVE_MAX_ENTRIES`` insertions
(older ones become unknown, which only costs decodability, never correctness).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import hpack
from hpack.hpack import decode_integer
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable, table_entry_size

_STATIC = HeaderTable.STATIC_TABLE
_NSTATIC = len(_STATIC)
_PASSIVE_MAX_ENTRIES = 4096
_CACHE_MAX = 256  # decoded blocks kept per direction (see HeaderDecoder.decode)
# Decoded header list bound per block (the library's DoS guard): 1 MiB, far above real heads.
MAX_HEADER_LIST = 1 << 20


@dataclass(frozen=True, slots=True)
class Decoded:
    """One header block's outcome. ``fields``: decoded (name, value) pairs in block order; a field
    whose name or value could not be decoded is left out and counted in ``unknown``. ``error``:
    why decoding stopped early (the fields before it are kept), or None."""

    fields: tuple[tuple[str, str], ...]  # latin-1 decoded
    unknown: int = 0
    error: str | None = None
    secret: bool = False  # a watched (secret) field name is among the fields


# One-byte indexed field representations in a row: 1xxxxxxx below 0xFF (whose index goes on).
_INDEXED_RUN = re.compile(rb"[\x80-\xfe]+").match


def _literal(block: bytes, pos: int) -> tuple[bytes, int]:
    """The string literal at ``pos`` (RFC 7541 5.2: Huffman flag, 7-bit prefix length) and the
    position after it; ValueError when the block ends first."""
    h = block[pos]
    if h & 0x7F != 0x7F:
        length, start = h & 0x7F, pos + 1
    else:
        length, used = decode_integer(memoryview(block)[pos:], 7)
        start = pos + used
    end = start + length
    if end > len(block):
        raise ValueError("truncated header block")
    raw = block[start:end]
    return (decode_huffman(raw) if h & 0x80 else raw), end


def _text(fields: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """Fields as the records keep them: latin-1 text (every byte maps to one character)."""
    return tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in fields)


class HeaderDecoder:
    """HPACK state of one direction (see the module docstring)."""

    __slots__ = (
        "_cache",
        "_entries",
        "_runs",
        "_lib",
        "_limit",
        "_max",
        "_tail_unknown",
        "_watch",
        "passive",
    )

    def __init__(
        self, *, known_start: bool, table_limit: int = 4096, watch: frozenset[str] = frozenset()
    ) -> None:
        self._watch = watch
        self._limit = table_limit  # the decoding side's SETTINGS_HEADER_TABLE_SIZE, as last seen
        self._lib: hpack.Decoder | None = None
        self._cache: dict[bytes, Decoded] = {}
        # A run of one-byte indexed fields -> the fields as text, their RFC 7541 size and whether
        # a watched name is among them (``_decode_neutral``); emptied with ``_cache`` when the
        # table changes.
        self._runs: dict[bytes, tuple[tuple[tuple[str, str], ...], int, bool]] = {}
        # Passive table: newest first; None for an entry whose name or value is unknown.
        self._entries: list[tuple[bytes, bytes] | None] = []
        self._tail_unknown = True  # entries older than those in _entries may exist
        self._max: int | None = (
            None  # the table's current maximum size, once a size update shows it
        )
        self.passive = True
        if known_start:
            self._known()

    def _known(self) -> None:
        lib = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        lib.max_allowed_table_size = self._limit
        self._lib = lib
        self._cache.clear()
        self._runs.clear()
        self.passive = False
        self._entries = []
        self._tail_unknown = False

    def set_table_limit(self, size: int) -> None:
        """The decoding side advertised SETTINGS_HEADER_TABLE_SIZE ``size``. The encoder may keep
        using the old size until it sees the setting, so the bound only grows until a block's
        size update brings the table down (the library checks updates against it)."""
        self._limit = size
        if self._lib is not None:
            self._lib.max_allowed_table_size = max(size, self._lib.header_table_size)

    def lose_state(self) -> None:
        """Bytes of this direction were lost: every dynamic entry is unknown from now on."""
        self._lib = None
        self._cache.clear()
        self._runs.clear()
        self.passive = True
        self._entries = []
        self._tail_unknown = True
        self._max = None

    def decode(self, block: bytes) -> Decoded:
        """The fields of one complete header block (``secret`` marked: a watched field name)."""
        return self._decode(block)

    def _secret(self, d: Decoded) -> Decoded:
        if self._watch and any(n.lower() in self._watch for n, _ in d.fields):
            return Decoded(d.fields, d.unknown, d.error, True)
        return d

    def _decode(self, block: bytes) -> Decoded:
        lib = self._lib
        if lib is not None:
            # A block that left the table as it was decodes the same way while the table stays
            # so: gRPC peers repeat their heads and trailers byte for byte once the table is warm.
            # Any change to the table (an insertion puts a new tuple in front; a size update)
            # empties the cache. A hit is one dict lookup instead of a decode (~20 us).
            cache = self._cache
            hit = cache.get(block)
            if hit is not None:
                return hit
            got = self._decode_neutral(lib, block)
            if got is not None:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[block] = got
                return got
            table = lib.header_table
            entries = table.dynamic_entries
            front = entries[0] if entries else None
            size = table.maxsize
            try:
                fields = lib.decode(block, raw=True)
            except hpack.HPACKError as exc:
                self.lose_state()
                return Decoded((), error=f"hpack: {exc}")
            out = self._secret(Decoded(_text(fields)))
            if (entries[0] if entries else None) is front and table.maxsize == size:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[block] = out
            else:
                cache.clear()
                self._runs.clear()
            return out
        return self._decode_passive(block)

    def _decode_neutral(self, lib: hpack.Decoder, block: bytes) -> Decoded | None:
        """A block whose every representation leaves the table as it is (indexed fields,
        literals without indexing or never indexed: RFC 7541 6.1, 6.2.2, 6.2.3), read in one pass
        with the library's parts: its table (``get_by_index``), integer and Huffman decoders. A
        run of one-byte indexed fields (found by a regex) is turned into text once while the
        table is unchanged (``_runs``), so a head that differs from the last one only in a field
        sent without indexing (a request id) costs a lookup and that field's strings. None when a
        representation would change the table (6.2.1, 6.3) or anything is off (an index out of
        range, a truncated string, bad Huffman, a header list over the bound, a table above the
        setting): the library then decodes the block whole and names the error. O(block
        size)."""
        if lib.header_table_size > lib.max_allowed_table_size:
            return None  # the library refuses every block until the encoder shrinks the table
        runs = self._runs
        watch = self._watch
        get = lib.header_table.get_by_index
        fields: list[tuple[str, str]] = []
        size = 0
        secret = False
        pos, n = 0, len(block)
        try:
            while pos < n:
                m = _INDEXED_RUN(block, pos)
                if m is not None:  # one-byte indexed fields (RFC 7541 6.1, index below 127)
                    run = m.group()
                    hit = runs.get(run)
                    if hit is None:
                        got = _text([get(b & 0x7F) for b in run])  # InvalidTableIndex: 0, range
                        hit = runs[run] = (
                            got,
                            sum([len(f) + len(v) + 32 for f, v in got]),
                            bool(watch) and any(f.lower() in watch for f, _ in got),
                        )
                    fields += hit[0]
                    size += hit[1]
                    secret = secret or hit[2]
                    pos = m.end()
                elif not block[pos] & 0xE0:  # without indexing (0000), never indexed (0001)
                    index, used = decode_integer(memoryview(block)[pos:], 4)
                    if index:  # the name is the table's
                        name = get(index)[0]
                        pos += used
                    else:
                        name, pos = _literal(block, pos + 1)
                    value, pos = _literal(block, pos)
                    text = (name.decode("latin-1"), value.decode("latin-1"))
                    fields.append(text)
                    size += len(name) + len(value) + 32
                    secret = secret or (bool(watch) and text[0].lower() in watch)
                else:
                    # a long index (0xFF ...), incremental indexing or a size update: the library
                    return None
                if size > MAX_HEADER_LIST:
                    return None
        except (hpack.HPACKError, IndexError, ValueError):
            return None
        return Decoded(tuple(fields), secret=secret)

    # -- passive mode ---------------------------------------------------------------------------

    def _lookup(self, index: int) -> tuple[bytes, bytes] | None | bool:
        """Entry ``index``: the pair, None when unknown, False when out of range (an error)."""
        if index <= 0:
            return False
        if index <= _NSTATIC:
            return _STATIC[index - 1]
        i = index - _NSTATIC - 1
        if i < len(self._entries):
            return self._entries[i]
        return None if self._tail_unknown else False

    def _insert(self, entry: tuple[bytes, bytes] | None) -> None:
        self._entries.insert(0, entry)
        self._evict()
        if len(self._entries) > _PASSIVE_MAX_ENTRIES:
            del self._entries[_PASSIVE_MAX_ENTRIES:]

    def _evict(self) -> None:
        """Drop the entries the encoder has evicted, when that is certain: the table's current
        maximum is known (a size update was seen) and the sizes up to the cut are known. Cutting
        into the entries seen proves every older, unknown one gone too."""
        if self._max is None:
            return
        size = 0
        entries = self._entries
        for k, e in enumerate(entries):
            if e is None:
                return
            size += table_entry_size(*e)
            if size > self._max:
                del entries[k:]
                self._tail_unknown = False
                return

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        length, used = decode_integer(memoryview(data)[pos:], 7)
        start = pos + used
        raw = data[start : start + length]
        if len(raw) != length:
            raise ValueError("truncated header block")
        if data[pos] & 0x80:
            raw = decode_huffman(raw)
        return bytes(raw), start + length

    def _decode_passive(self, block: bytes) -> Decoded:
        fields: list[tuple[bytes, bytes]] = []
        unknown = 0
        pos, n = 0, len(block)
        seen_field = False
        try:
            while pos < n:
                b = block[pos]
                view = memoryview(block)[pos:]
                if b & 0x80:  # indexed field
                    index, used = decode_integer(view, 7)
                    pos += used
                    entry = self._lookup(index)
                    if entry is False:
                        raise ValueError(f"index {index} out of range")
                    if entry is None:
                        unknown += 1
                    else:
                        fields.append(entry)  # type: ignore[arg-type]
                    seen_field = True
                    continue
                if (b & 0xE0) == 0x20:  # dynamic table size update
                    if seen_field:
                        raise ValueError("table size update after a field")
                    size, used = decode_integer(view, 5)
                    pos += used
                    if size > self._limit and not self._tail_unknown:
                        raise ValueError(f"table size {size} above the setting {self._limit}")
                    self._max = size
                    self._evict()
                    if size == 0:
                        # Emptied: the direction is fully known again; the library takes over for
                        # the rest of this block's fields too.
                        self._known()
                        rest = self._decode(block[pos:]) if pos < n else Decoded(())
                        return Decoded(
                            _text(fields) + rest.fields, unknown + rest.unknown, rest.error
                        )
                    continue
                indexing = bool(b & 0x40)
                prefix = 6 if indexing else 4
                name_index, used = decode_integer(view, prefix)
                if name_index:
                    pos += used
                    entry = self._lookup(name_index)
                    if entry is False:
                        raise ValueError(f"name index {name_index} out of range")
                    name = entry[0] if entry is not None else None  # type: ignore[index]
                else:
                    name, pos = self._string(block, pos + 1)
                value, pos = self._string(block, pos)
                seen_field = True
                if name is None:
                    unknown += 1
                    if indexing:
                        self._insert(None)
                    continue
                fields.append((name, value))
                if indexing:
                    self._insert((name, value))
        except (ValueError, IndexError, hpack.HPACKError) as exc:
            self.lose_state()
            return self._secret(Decoded(_text(fields), unknown, error=f"hpack: {exc}"))
        return self._secret(Decoded(_text(fields), unknown))
