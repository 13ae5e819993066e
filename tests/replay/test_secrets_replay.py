"""Secrets in replay (issue 12 item 10): the shadow's Set-Cookie and tokens redacted in the results,
requests read back with redacted placeholders skipped, substituted or sent by rule,
Proxy-Authorization never forwarded (the Policy the mirror shares)."""

from __future__ import annotations

import orjson
import pytest

from shadowtap.redact import Redactor
from tests.support.hostile import HostileServer
from tests.support.proc import shadowtap

from .conftest import make_exchange, write_jsonl


@pytest.fixture
def keyfile(tmp_path, monkeypatch):
    path = str(tmp_path / "key" / "redact.key")
    monkeypatch.setenv("SHADOWTAP_KEY_FILE", path)
    return path


def test_replay_results_redact_the_shadows_secrets(tmp_path, keyfile):
    server = HostileServer()
    try:
        inp = write_jsonl(tmp_path / "in.jsonl", [make_exchange(target="/secret")])
        out = tmp_path / "res.jsonl"
        p = shadowtap("replay", inp, "-t", server.url, "-o", str(out))
        assert p.returncode == 0, p.stderr
        text = out.read_text()
        assert "cookie-secret" not in text and "eyJhbGci" not in text
        res = orjson.loads(text)
        assert dict(res["response"]["headers"])["Set-Cookie"].startswith("redacted:")
        assert '"completion_tokens":12' in res["response"]["body"]
        p = shadowtap("replay", inp, "-t", server.url, "-o", str(out), "--keep-secrets")
        assert "cookie-secret" in out.read_text()
    finally:
        server.close()


def test_replay_of_placeholders_skips_substitutes_or_sends_by_rule(tmp_path, keyfile, aio_target):
    red = Redactor(b"k" * 32)
    ex = red.exchange(
        make_exchange(
            target="/v1/x?api_key=AKIAIOSFODNN7EXAMPLE&page=1",
            headers=(("X-Api-Key", "key-abc"), ("Proxy-Authorization", "Basic eA==")),
        )
    )
    plain = make_exchange(
        target="/plain", index=1, headers=(("Proxy-Authorization", "Basic eA=="),)
    )
    inp = write_jsonl(tmp_path / "in.jsonl", [ex, plain])
    p = shadowtap("replay", inp, "-t", aio_target.url)
    assert p.returncode == 0, p.stderr
    assert "requests carry redacted secrets (header X-Api-Key, query api_key" in p.stderr
    assert "skipped: redacted_secret\t1" in p.stderr
    assert [s.path for s in aio_target.seen] == ["/plain"]
    assert aio_target.seen[0].header("Proxy-Authorization") is None  # never forwarded
    aio_target.seen.clear()
    p = shadowtap(
        "replay",
        inp,
        "-t",
        aio_target.url,
        "--substitute",
        "X-Api-Key=test-key",
        "--substitute",
        "api_key=test-qkey",
    )
    assert p.returncode == 0, p.stderr
    sent = next(s for s in aio_target.seen if s.path.startswith("/v1/x"))
    assert sent.header("X-Api-Key") == "test-key" and sent.path == "/v1/x?api_key=test-qkey&page=1"
    assert sent.header("Proxy-Authorization") is None
    aio_target.seen.clear()
    p = shadowtap("replay", inp, "-t", aio_target.url, "--redacted", "send")
    assert p.returncode == 0, p.stderr
    sent = next(s for s in aio_target.seen if s.path.startswith("/v1/x"))
    assert sent.header("X-Api-Key").startswith("redacted:")
    aio_target.seen.clear()
    # a placeholder in a header --set-header replaces is no reason to skip
    p = shadowtap(
        "replay",
        inp,
        "-t",
        aio_target.url,
        "--set-header",
        "X-Api-Key: mine",
        "--substitute",
        "api_key=q",
    )
    assert p.returncode == 0 and "redacted secrets" not in p.stderr, p.stderr
    assert {s.path.split("?")[0] for s in aio_target.seen} == {"/v1/x", "/plain"}
