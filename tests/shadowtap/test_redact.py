import os
import stat

from shadowtap.records import Exchange, Request
from shadowtap.redact import Redactor, load_key


def test_secrets_replaced_by_keyed_hash_equal_for_equal_values(tmp_path):
    key = load_key(str(tmp_path / "k" / "redact.key"))
    assert stat.S_IMODE(os.stat(tmp_path / "k" / "redact.key").st_mode) == 0o600
    assert load_key(str(tmp_path / "k" / "redact.key")) == key  # stable across runs
    r = Redactor(key, frozenset({"authorization", "cookie", "x-api-key"}))
    hdrs = (
        ("Host", "h"),
        ("Authorization", "Bearer s3cret"),
        ("cookie", "a=1"),
        ("X-Api-Key", "k1"),
    )
    out = r.headers(hdrs)
    assert out[0] == ("Host", "h")
    assert all(v.startswith("redacted:") and "s3cret" not in v for _, v in out[1:])
    assert r.headers((("AUTHORIZATION", "Bearer s3cret"),))[0][1] == out[1][1]
    assert r.headers((("Authorization", "Bearer other"),))[0][1] != out[1][1]
    assert r.headers(out) == out  # redacting twice changes nothing
    other = Redactor(b"another key of 32 bytes........", r.names)
    assert other.headers(hdrs)[1][1] != out[1][1]  # the hash is keyed


def test_exchange_redaction_keeps_the_rest():
    req = Request(
        ts=1.0, end_ts=1.0, version="1.1", headers=(("Cookie", "sid=1"),), method="GET", target="/"
    )
    ex = Exchange(
        id="a", client="1.1.1.1:1", server="2.2.2.2:2", index=0, request=req, response=None
    )
    red = Redactor(b"k" * 32).exchange(ex)
    assert red.request.headers[0][1].startswith("redacted:") and red.request.target == "/"
    plain = Exchange(
        id="b",
        client="1.1.1.1:1",
        server="2.2.2.2:2",
        index=0,
        request=Request(ts=1.0, end_ts=1.0, version="1.1", headers=(), method="GET", target="/"),
        response=None,
    )
    assert Redactor(b"k" * 32).exchange(plain) is plain


def test_heads_seen_before_give_the_same_redaction_and_the_same_object_when_clean():
    import shadowtap.redact as redact

    r = Redactor(b"k" * 32)
    secret = (("Host", "h"), ("Authorization", "Bearer s3cret-value-0123456789"))
    clean = (("Host", "h"), ("Accept", "*/*"))
    first = r.headers(secret)
    again = r.headers(tuple(tuple(h) for h in secret))  # an equal head, another object
    assert again == first and again[1][1].startswith("redacted:")
    assert Redactor(b"k" * 32).headers(secret) == first  # as a fresh (unmemoised) redactor says
    assert r.headers(clean) is clean
    copy = tuple(tuple(h) for h in clean)
    assert r.headers(copy) is copy  # unchanged heads come back as given, not as the first one
    for i in range(redact.HEADS_MEMO + 10):  # bounded
        r.headers((("X-N", str(i)),))
    assert len(r._heads) <= redact.HEADS_MEMO
    assert r.headers(secret) == first


def test_small_json_bodies_seen_before_give_the_same_redaction():
    import shadowtap.redact as redact

    r = Redactor(b"k" * 32)
    body = b'{"user": "a", "password": "hunter2", "n": 1}'
    first = r.json_text(body)
    assert b"hunter2" not in first and b'"user": "a"' in first
    assert r.json_text(bytes(bytearray(body))) == first == Redactor(b"k" * 32).json_text(body)
    big = b'{"password": "hunter2", "pad": "' + b"x" * redact.SMALL_BODY + b'"}'
    assert b"hunter2" not in r.json_text(big)  # not remembered, redacted all the same
    assert big not in r._bodies
