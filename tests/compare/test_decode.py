import gzip
import zlib

import brotli

from shadowtap.compare.decode import decode_body

BODY = b'{"hello": "world"}' * 50


def test_each_coding_decodes():
    assert decode_body(gzip.compress(BODY), "gzip").body == BODY
    assert decode_body(gzip.compress(BODY), "x-gzip").body == BODY
    assert decode_body(zlib.compress(BODY), "deflate").body == BODY
    raw = zlib.compressobj(wbits=-15)
    assert decode_body(raw.compress(BODY) + raw.flush(), "deflate").body == BODY
    assert decode_body(brotli.compress(BODY), "br").body == BODY
    assert decode_body(BODY, "identity").body == BODY
    assert decode_body(BODY, None).body == BODY


def test_stacked_codings_are_removed_last_first():
    data = brotli.compress(gzip.compress(BODY))
    assert decode_body(data, "gzip, br").body == BODY


def test_bad_data_is_kept_and_explained():
    r = decode_body(b"not gzip", "gzip")
    assert r.body == b"not gzip" and "gzip" in r.error
    r = decode_body(BODY, "compress")
    assert r.body == BODY and "unknown content-encoding" in r.error


def test_truncated_gzip_gives_what_it_can():
    data = gzip.compress(BODY)
    r = decode_body(data[: len(data) // 2], "gzip")
    assert BODY.startswith(r.body) and r.body
