"""Secrets (issue 12 item 10), through the real commands: extract of a crafted capture, replay
against real servers, compare's report; one set of rules (shadowtap.redact) everywhere."""

from __future__ import annotations

import orjson
import pytest

from shadowtap.compare.samples import body_excerpt, redact_field
from shadowtap.redact import SecretRules, report_json, report_text
from tests.support.hostile_pcaps import secrets as secrets_pcap
from tests.support.proc import shadowtap


@pytest.fixture
def keyfile(tmp_path, monkeypatch):
    path = str(tmp_path / "key" / "redact.key")
    monkeypatch.setenv("SHADOWTAP_KEY_FILE", path)
    return path


def extract(tmp_path, *extra: str, env: dict[str, str] | None = None) -> list[dict]:
    cap = secrets_pcap(str(tmp_path / "secrets.pcap"))
    out = tmp_path / "ex.jsonl"
    p = shadowtap("extract", cap, "-o", str(out), *extra, env=env)
    assert p.returncode == 0, p.stderr
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def test_extract_redacts_secrets_and_keeps_non_secrets(tmp_path, keyfile):
    login, form = extract(tmp_path)
    text = orjson.dumps([login, form]).decode()
    for secret in (
        "AKIAIOSFODNN7EXAMPLE",
        "tok-123",
        "key-abc",
        "auth-xyz",
        "sekrit-bearer",
        "dXNlcjpwYXNz",
        "hunter2",
        "eyJhbGci",
        "cookie-secret",
        "cs-1",
    ):
        assert secret not in text, secret
    req, resp = login["request"], login["response"]
    assert (
        req["target"].startswith("/v1/login?api_key=redacted:")
        and "&page=2&max_tokens=50" in req["target"]
    )
    headers = dict(req["headers"])
    assert all(
        headers[h].startswith("redacted:")
        for h in ("X-Api-Key", "X-Auth-Token", "Authorization", "Proxy-Authorization")
    )
    body = orjson.loads(req["body"])
    assert (
        body["password"].startswith("redacted:")
        and body["user"] == "bob"
        and body["remember"] is True
    )
    rbody = orjson.loads(resp["body"])
    assert rbody["usage"] == {"completion_tokens": 12, "prompt_tokens": 5, "total_tokens": 17}
    assert rbody["token_type"] == "Bearer" and rbody["access_token"].startswith("redacted:")
    assert dict(resp["headers"])["Set-Cookie"].startswith("redacted:")
    assert resp["body_len"] == len(resp["body"].encode())
    assert form["request"]["body"].startswith("username=bob&password=redacted:")
    assert (
        form["request"]["body"].endswith("&count=3")
        and "client_secret=redacted:" in form["request"]["body"]
    )


def test_extract_secret_header_keep_secrets_and_the_configuration_file(tmp_path, keyfile):
    login, _ = extract(tmp_path, "--secret-header", "Content-Type")
    assert dict(login["request"]["headers"])["Content-Type"].startswith("redacted:")
    login, _ = extract(tmp_path, "--keep-secrets")
    assert (
        "hunter2" in login["request"]["body"]
        and dict(login["request"]["headers"])["X-Api-Key"] == "key-abc"
    )
    conf = tmp_path / "secrets.toml"
    conf.write_text('names = ["user"]\nnot_secret = ["password"]\nheaders = ["host"]\n')
    login, _ = extract(tmp_path, env={"SHADOWTAP_SECRETS": str(conf)})
    body = orjson.loads(login["request"]["body"])
    assert body["password"] == "hunter2" and body["user"].startswith("redacted:")
    assert dict(login["request"]["headers"])["Host"].startswith("redacted:")
    conf.write_text('nmes = ["x"]\n')
    cap = str(tmp_path / "secrets.pcap")
    p = shadowtap(
        "extract", cap, "-o", str(tmp_path / "x.jsonl"), env={"SHADOWTAP_SECRETS": str(conf)}
    )
    assert p.returncode == 3 and "unknown key(s) nmes" in p.stderr


def test_rules_names_and_shapes():
    r = SecretRules()
    for name in (
        "password",
        "userPassword",
        "api_key",
        "apiKey",
        "X-Api-Key",
        "access_token",
        "github_token",
        "client_secret",
        "session_id",
        "x-csrf-token",
    ):
        assert r.is_secret_name(name), name
    for name in (
        "completion_tokens",
        "usage.completion_tokens",
        "total_tokens",
        "max_tokens",
        "tokens",
        "token_type",
        "key",
        "passport",
        "password_reset_required",
        "monkey",
    ):
        assert not r.is_secret_name(name), name
    assert r.is_secret_value("Bearer abcdefghijklmnop1234")
    assert r.is_secret_value("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.x")
    assert not r.is_secret_value("550e8400-e29b-41d4-a716-446655440000")  # an id is no secret
    assert not r.is_secret_value("basic information about the bearer of this card")


def test_reports_show_counts_and_hide_secrets():
    assert redact_field("body.usage.completion_tokens", 12) == 12
    assert redact_field("body.usage.total_tokens", 17) == 17
    assert redact_field("body.access_token", "abc") == "[redacted]"
    assert redact_field("header.x-api-key", "k") == "[redacted]"
    assert redact_field("header.set-cookie", "sid=1") == "[redacted]"
    assert report_json({"usage": {"completion_tokens": 3}, "password": "x", "n": {"token": 5}}) == {
        "usage": {"completion_tokens": 3},
        "password": "[redacted]",
        "n": {"token": 5},
    }
    assert report_text("GET /x?token=abc&max_tokens=10") == "GET /x?token=[redacted]&max_tokens=10"
    big = list(range(300_000))
    text = body_excerpt(orjson.dumps(big), big, True, 4096)
    assert len(text) < 4200 and "300000" not in text
