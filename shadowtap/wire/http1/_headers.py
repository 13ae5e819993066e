"""HTTP/1.x header blocks: parsing (wire bytes, wire order and case kept), the line memo, and
the framing fields (Content-Length, Transfer-Encoding, Content-Encoding)."""

from __future__ import annotations

from typing import NamedTuple

from shadowtap.wire.anomalies import Anomaly
from shadowtap.wire.http1._messages import _Msg


def _parse_headers(
    block: bytes, msg: _Msg, watch: tuple[str, ...], memo: dict[str, Block]
) -> tuple[tuple[tuple[str, str], ...], str, bool]:
    """A header block (the lines after the start line, without the final empty line) -> the
    (name, value) pairs, the block lower-cased (for cheap presence tests) and whether it names one
    of ``watch`` (``_watched``). One decode for the block; per line one partition and one strip.
    obs-fold continuation lines join the previous value with one space (``obs_fold``); lines
    without a colon are dropped (``bad_header``). ``memo``: ``block_memo(watch)``."""
    if block[-1:] == b"\r":
        block = block[:-1]
    return _parse_header_text(block.decode("latin-1"), msg, watch, memo)


# Header lines seen recently -> their (name, value): traffic repeats most lines (Host, User-Agent,
# Accept, Server, Content-Type, ...), and a lookup costs a third of a split and a strip. A memo of a
# pure function: lines up to _LINE_MEMO_WIDTH characters, at most _LINE_MEMO_SIZE of them (~1 MB),
# emptied when full.
_LINE_MEMO: dict[str, tuple[str, str]] = {}
_LINE_MEMO_SIZE = 4096
_LINE_MEMO_WIDTH = 160


def _header_line(line: str) -> tuple[str, str]:
    """One plain ``name: value`` line (a colon in it, else IndexError), remembered."""
    p = line.split(":", 1)
    field = (p[0], p[1].strip(" \t"))
    if len(line) <= _LINE_MEMO_WIDTH:
        if len(_LINE_MEMO) >= _LINE_MEMO_SIZE:
            _LINE_MEMO.clear()
        _LINE_MEMO[line] = field
    return field


# Header fields kept per head: past them the rest of the head is dropped (``too_many_headers``). A
# head is at most ``max_head`` bytes anyway; this bounds the objects one head makes (a 64 KiB head
# of "a:" lines would be ~16,000 fields, ~2.5 MB of tuples and strings, per pipelined request).
MAX_HEADERS = 256


def _plain_headers(text: str) -> tuple[tuple[str, str], ...] | None:
    """The header block's fields when every line is a plain CRLF ``name: value`` (no folding, no
    whitespace before a colon, no bare LF, a colon on every line): the common case, ~0.1 us a
    line seen before (``_LINE_MEMO``), ~0.3 us else. None otherwise (``_parse_header_text`` then
    reads it line by line)."""
    lines = text.split("\r\n")
    if len(lines) > MAX_HEADERS:
        return None  # read line by line, where the cap applies
    if (
        text.count("\n") == len(lines) - 1
        and "\n " not in text
        and "\n\t" not in text
        and " :" not in text
        and "\t:" not in text
        and "\n:" not in text
        and text[:1] not in (" ", "\t", ":")
    ):
        get = _LINE_MEMO.get
        try:  # a line without a colon raises IndexError
            return tuple([get(line) or _header_line(line) for line in lines])
        except IndexError:
            return None
    return None


# Whole plain header blocks seen recently -> ``Block``: traffic repeats whole blocks (a client's
# requests differ in their request line, a server's answers in Date, once a second), and one
# lookup stands for _plain_headers' split, checks and line lookups, the lower-casing, the framing
# tests of the one-segment lanes and the search for secret names (``_watched``: ~1 us a message
# with the default redaction's 20 names): ~1.5-2.5 us a message. A memo of a pure function of the
# block's text and the watched names: one memo per set of names (``block_memo``: an Extractor's,
# fetched once a connection; a process has one or two), blocks up to _BLOCK_MEMO_WIDTH
# characters, at most _BLOCK_MEMO_SIZE of them, emptied when full: ~1.5 MB a memo of 300-character
# heads, ~7 MB at most (the text, its lower-cased copy and the fields of 2,048). A block goes
# in the second time it is met (its hash is in _BLOCK_SEEN, emptied when full): blocks met once
# (a trace or request id in every head) cost an int there, not their text kept.
_BLOCK_MEMOS: dict[tuple[str, ...], dict[str, Block]] = {}
_BLOCK_MEMOS_MAX = 4  # sets of watched names (past them the table starts again: tests make many)
_BLOCK_MEMO_SIZE = 1024
_BLOCK_MEMO_WIDTH = 2048
_BLOCK_SEEN: set[int] = set()
_BLOCK_SEEN_SIZE = 4096


class Block(NamedTuple):
    """A plain header block read (``_read_block``)."""

    headers: tuple[tuple[str, str], ...]
    lowered: str  # the block lower-cased: presence tests of names (values included: cheap, wary)
    coded: bool  # "transfer-encoding" or "content-encoding" in ``lowered``
    upgrade: bool  # "upgrade" in ``lowered``
    # The one Content-Length, a count of ASCII digits; -1: "content-length" not in ``lowered``;
    # -2: named, but not one count (no field, several, or not digits).
    length: int
    secret: bool  # ``_watched(watch, lowered)`` for the memo's watched names


# Block(...) goes through a Python-level __new__; tuple.__new__ makes the same object for a
# fifth of the cost (one per header block not remembered).
_new_tuple = tuple.__new__


def block_memo(watch: tuple[str, ...]) -> dict[str, Block]:
    """The memo of the blocks read for the watched names ``watch`` (see _BLOCK_MEMOS)."""
    memo = _BLOCK_MEMOS.get(watch)
    if memo is None:
        if len(_BLOCK_MEMOS) >= _BLOCK_MEMOS_MAX:
            _BLOCK_MEMOS.clear()  # a parser still holding its memo keeps it, bounded
        memo = _BLOCK_MEMOS[watch] = {}
    return memo


def _read_block(text: str, watch: tuple[str, ...], memo: dict[str, Block]) -> Block | None:
    """A header block (the latin-1 text between the start line and the empty line, not empty)
    when ``_plain_headers`` reads it, else None; for a block not in ``memo`` (``block_memo(watch)``:
    the callers look there first, ``memo.get(text) or _read_block(text, watch, memo)``), and put
    there the second time it is met."""
    headers = _plain_headers(text)
    if headers is None:
        return None
    lowered = text.lower()
    length = -1
    if "content-length" in lowered:
        cls = _values(headers, "content-length")
        length = int(cls[0]) if len(cls) == 1 and cls[0].isdigit() and cls[0].isascii() else -2
    block = _new_tuple(
        Block,
        (
            headers,
            lowered,
            "transfer-encoding" in lowered or "content-encoding" in lowered,
            "upgrade" in lowered,
            length,
            bool(watch) and _watched(watch, lowered),
        ),
    )
    if len(text) <= _BLOCK_MEMO_WIDTH:
        h = hash(text)  # known already: the memo's lookup computed it
        if h in _BLOCK_SEEN:
            if len(memo) >= _BLOCK_MEMO_SIZE:
                memo.clear()
            memo[text] = block
        else:
            if len(_BLOCK_SEEN) >= _BLOCK_SEEN_SIZE:
                _BLOCK_SEEN.clear()
            _BLOCK_SEEN.add(h)
    return block


def _parse_header_text(
    text: str, msg: _Msg, watch: tuple[str, ...], memo: dict[str, Block]
) -> tuple[tuple[tuple[str, str], ...], str, bool]:
    """``_parse_headers`` on the latin-1 decoded block."""
    plain = memo.get(text) or _read_block(text, watch, memo)
    if plain is not None:
        return plain[0], plain[1], plain[5]
    out: list[tuple[str, str]] = []
    append = out.append
    for line in text.split("\n"):
        if len(out) >= MAX_HEADERS:
            msg.anomalies.append(Anomaly.TOO_MANY_HEADERS)
            break
        if line[-1:] == "\r":
            line = line[:-1]
        name, sep, value = line.partition(":")
        if sep and name and name[0] not in " \t" and name[-1] not in " \t":
            append((name, value.strip(" \t")))
        elif line[:1] in (" ", "\t") and out:
            n, v = out[-1]
            out[-1] = (n, (v + " " + line.strip(" \t")).strip())
            if Anomaly.OBS_FOLD not in msg.anomalies:
                msg.anomalies.append(Anomaly.OBS_FOLD)
        elif sep and name.strip(" \t"):
            append(
                (name.rstrip(" \t"), value.strip(" \t"))
            )  # whitespace before the colon: kept lenient
            if Anomaly.BAD_HEADER not in msg.anomalies:
                msg.anomalies.append(Anomaly.BAD_HEADER)
        elif line and Anomaly.BAD_HEADER not in msg.anomalies:
            msg.anomalies.append(Anomaly.BAD_HEADER)
    lowered = text.lower()
    return tuple(out), lowered, bool(watch) and _watched(watch, lowered)


def _watched(names: tuple[str, ...], lowered: str) -> bool:
    """Whether a lower-cased head mentions one of ``names`` (anywhere: a false alarm only costs
    the redactor a look)."""
    for name in names:
        if name in lowered:
            return True
    return False


def _values(headers: tuple[tuple[str, str], ...], lname: str) -> list[str]:
    size = len(lname)  # a length test first: most names are not lower-cased at all
    return [v for n, v in headers if len(n) == size and n.lower() == lname]


def _content_length(values: list[str], msg: _Msg) -> int | None:
    """The Content-Length of a message, or None when absent or unusable (``bad_content_length``).
    Repeated equal values (also comma-joined) are one value; different ones are
    ``conflicting_content_length`` and the first is used. Digits are ASCII digits: ``str.isdigit``
    alone takes latin-1's superscripts (``²``), which ``int`` refuses."""
    if len(values) == 1 and values[0].isdigit() and values[0].isascii():
        return int(values[0])
    nums: list[int] = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part.isdigit() or not part.isascii():
                msg.anomalies.append(Anomaly.BAD_CONTENT_LENGTH)
                return None
            nums.append(int(part))
    if not nums:
        return None
    if any(n != nums[0] for n in nums):
        msg.anomalies.append(Anomaly.CONFLICTING_CONTENT_LENGTH)
    return nums[0]


def _framing(
    headers: tuple[tuple[str, str], ...], lowered: str, msg: _Msg
) -> tuple[str | None, list[str]]:
    """Transfer-Encoding (joined) and Content-Length values of a head; sets ``msg.encodings``.
    The lower-cased block is searched first, so a head without them costs three ``in`` tests."""
    te = None
    cls: list[str] = []
    if "content-length" in lowered:
        cls = _values(headers, "content-length")
    if "transfer-encoding" in lowered:
        tes = _values(headers, "transfer-encoding")
        te = ",".join(tes) if tes else None
    if "content-encoding" in lowered:
        ces = _values(headers, "content-encoding")
        msg.encodings = ",".join(ces) if ces else None
    return te, cls
