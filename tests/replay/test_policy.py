from __future__ import annotations

import re
from dataclasses import replace
from ipaddress import ip_address

import pytest

from shadowtap.errors import InputError
from shadowtap.records import header_value
from shadowtap.replay.captured_server import ThisHost
from shadowtap.replay.policy import (
    Policy,
    Prepared,
    ReplayRefused,
    Route,
    Skip,
    SkipReason,
    Target,
    parse_header_filters,
    parse_header_pairs,
    parse_rewrites,
)

from .conftest import make_exchange

TARGET = Target.parse("http://127.0.0.1:8081")


def prepared(policy: Policy, ex) -> Prepared:
    d = policy.decide(ex)
    assert isinstance(d, Prepared), d
    return d


def reason(policy: Policy, ex) -> SkipReason:
    d = policy.decide(ex)
    assert isinstance(d, Skip), d
    return d.reason


def test_target_parsing():
    t = Target.parse("http://shadow.local:8080/api/")
    assert (t.scheme, t.host, t.port, t.prefix, t.authority) == (
        "http",
        "shadow.local",
        8080,
        "/api",
        "shadow.local:8080",
    )
    assert Target.parse("127.0.0.1:9000").base == "http://127.0.0.1:9000"
    assert Target.parse("https://[::1]/").authority == "[::1]"
    with pytest.raises(InputError):
        Target.parse("ftp://x/")


def test_host_is_the_target_by_default_and_framing_is_redone():
    ex = make_exchange(
        method="GET",
        target="/a?b=1",
        headers=(("Connection", "close"), ("Accept", "*/*"), ("Transfer-Encoding", "chunked")),
    )
    p = prepared(Policy(TARGET), ex)
    head, _, body = p.wire.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /a?b=1 HTTP/1.1"
    assert lines[1:] == ["Host: 127.0.0.1:8081", "Accept: */*", "Content-Length: 0"]
    assert p.url == "http://127.0.0.1:8081/a?b=1"
    assert body == b""


def test_keep_host_and_host_suffix():
    ex = make_exchange(headers=())
    assert (
        header_value(prepared(Policy(TARGET, keep_host=True), ex).headers, "host") == "shop.example"
    )
    assert (
        header_value(prepared(Policy(TARGET, host_suffix="-shadow"), ex).headers, "host")
        == "shop.example-shadow"
    )
    ex2 = make_exchange(host="api.example:8443")
    assert (
        header_value(prepared(Policy(TARGET, host_suffix="-shadow"), ex2).headers, "host")
        == "api.example-shadow:8443"
    )


def test_set_drop_and_url_rewrite():
    ex = make_exchange(
        target="/v1/users/7?x=1",
        headers=(("X-Trace", "abc"), ("Cookie", "redacted:ff"), ("Accept", "a")),
    )
    policy = Policy(
        TARGET,
        set_headers=parse_header_pairs(["Accept: b", "X-Shadow: yes"], "--set-header"),
        drop_headers=frozenset({"cookie"}),
        url_rewrites=parse_rewrites([r"^/v1/=>/v2/", r"x=\d+=>x=0"]),
    )
    p = prepared(policy, ex)
    assert p.target == "/v2/users/7?x=0"
    assert header_value(p.headers, "cookie") is None
    assert header_value(p.headers, "accept") == "b"
    assert header_value(p.headers, "x-shadow") == "yes"
    assert header_value(p.headers, "x-trace") == "abc"
    assert [n for n, _ in p.headers].count("Accept") == 1


def test_target_prefix_is_prepended():
    p = prepared(Policy(Target.parse("http://127.0.0.1:9/shadow")), make_exchange(target="/x"))
    assert p.wire.startswith(b"GET /shadow/x HTTP/1.1\r\n")


def test_filters_by_method_path_and_header():
    get = make_exchange(method="GET", target="/api/items", headers=(("X-Tenant", "acme"),))
    head = make_exchange(method="HEAD", target="/static/logo.png")
    p = Policy(TARGET, methods=frozenset({"GET"}))
    assert isinstance(p.decide(get), Prepared) and reason(p, head) is SkipReason.METHOD
    p = Policy(TARGET, path_pattern=re.compile(r"^/api/"))
    assert isinstance(p.decide(get), Prepared) and reason(p, head) is SkipReason.PATH
    p = Policy(TARGET, header_filters=parse_header_filters(["x-tenant=^ac"]))
    assert isinstance(p.decide(get), Prepared) and reason(p, head) is SkipReason.HEADER
    p = Policy(TARGET, header_filters=parse_header_filters(["X-Tenant=^zz"]))
    assert reason(p, get) is SkipReason.HEADER


def test_sampling_is_consistent_by_client_and_by_header():
    p = Policy(TARGET, sample_percent=30.0)
    kept_clients = set()
    for c in range(400):
        decisions = {
            isinstance(
                p.decide(make_exchange(client=f"10.3.{c // 250}.{c % 250}:{port}", index=i)),
                Prepared,
            )
            for i, port in enumerate((1000, 2000, 3000))
        }
        assert len(decisions) == 1  # every connection of one client address: all in or all out
        if decisions.pop():
            kept_clients.add(c)
    assert 80 <= len(kept_clients) <= 160  # ~30% of 400
    ph = Policy(TARGET, sample_percent=50.0, sample_key="header:X-User")
    for user in ("u1", "u2", "u3", "u4", "u5"):
        got = {
            isinstance(
                ph.decide(make_exchange(client=f"10.9.0.{k}:1", headers=(("X-User", user),))),
                Prepared,
            )
            for k in range(20)
        }
        assert len(got) == 1
    assert reason(Policy(TARGET, sample_percent=0.0), make_exchange()) is SkipReason.SAMPLED_OUT
    with pytest.raises(InputError):
        Policy(TARGET, sample_key="cookie")


def test_only_safe_methods_by_default_then_routes_then_unsafe_with_idempotency_key():
    post = make_exchange(method="POST", target="/v1/predict?m=2", body=b'{"x":1}')
    other = make_exchange(method="DELETE", target="/v1/items/3", index=1)
    for m in ("GET", "HEAD", "OPTIONS"):
        assert isinstance(Policy(TARGET).decide(make_exchange(method=m)), Prepared)
    assert reason(Policy(TARGET), post) is SkipReason.UNSAFE
    routes = Policy(TARGET, allow=(Route.parse("post /v1/predict"),))
    p = prepared(routes, post)
    assert p.wire.endswith(b'\r\nContent-Length: 7\r\n\r\n{"x":1}')
    assert (
        header_value(p.headers, "idempotency-key") is None
    )  # an allowed route is side-effect free
    assert reason(routes, other) is SkipReason.UNSAFE
    assert isinstance(
        Policy(TARGET, allow=(Route.parse("DELETE /v1/items/*"),)).decide(other), Prepared
    )
    unsafe = Policy(TARGET, allow_unsafe=True)
    key = header_value(prepared(unsafe, post).headers, "idempotency-key")
    assert (
        key
        == f"shadowtap-{post.id}"
        == header_value(prepared(unsafe, post).headers, "Idempotency-Key")
    )
    assert (
        header_value(prepared(unsafe, other).headers, "idempotency-key")
        == f"shadowtap-{other.id}"
        != key
    )
    no_key = Policy(TARGET, allow_unsafe=True, idempotency_key=False)
    assert header_value(prepared(no_key, post).headers, "idempotency-key") is None
    with pytest.raises(InputError):
        Route.parse("POST")


def test_truncated_body_and_missing_request_are_skipped():
    assert (
        reason(
            Policy(TARGET, allow_unsafe=True),
            make_exchange(method="POST", body=b"abc", body_truncated=True),
        )
        is SkipReason.BODY_TRUNCATED
    )
    ex = make_exchange()
    orphan = type(ex)(
        id="x", client=ex.client, server=ex.server, index=0, request=None, response=ex.response
    )
    assert reason(Policy(TARGET), orphan) is SkipReason.NO_REQUEST


def test_refuses_to_replay_into_the_captured_server_unless_forced():
    policy = Policy(Target.parse("http://127.0.0.1:8080")).with_server_check(
        {("127.0.0.1", 8080)}, host=ThisHost()
    )
    with pytest.raises(ReplayRefused, match="captured from"):
        policy.decide(make_exchange(server="127.0.0.1:8080"))
    with pytest.raises(ReplayRefused):  # another loopback address, same port: the same server
        policy.decide(make_exchange(server="127.0.0.5:8080"))
    assert isinstance(policy.decide(make_exchange(server="127.0.0.1:8081")), Prepared)
    assert isinstance(policy.decide(make_exchange(server="10.0.0.1:8080")), Prepared)
    forced = replace(policy, force=True)
    assert isinstance(forced.decide(make_exchange(server="127.0.0.1:8080")), Prepared)
    assert ReplayRefused.exit_code == 5


def test_bad_values_name_the_field_never_a_flag():
    """Domain code raises about fields; only the CLI knows flags (tests/shadowtap/cli)."""
    with pytest.raises(InputError, match="^set_header: ") as exc:
        parse_header_pairs(["NoColon"], "set_header")
    assert exc.value.field == "set_header" and exc.value.where is None
    with pytest.raises(InputError, match="^rewrite: bad regular expression") as exc:
        parse_rewrites(["(unclosed=>x"])
    assert exc.value.field == "rewrite"
    with pytest.raises(InputError, match="^rewrite: "):
        parse_rewrites(["no-arrow"])
    with pytest.raises(InputError, match="^target: ") as exc:
        Target.parse("ftp://x")
    assert exc.value.field == "target"
    with pytest.raises(InputError, match="^sample_percent: "):
        Policy(TARGET, sample_percent=101)


def test_absolute_form_targets_become_origin_form_and_asterisk_stays():
    p = prepared(
        Policy(Target.parse("http://127.0.0.1:9/pre")),
        make_exchange(target="http://shop.example/a/b?c=1"),
    )
    assert p.target == "/pre/a/b?c=1"
    p = prepared(Policy(TARGET), make_exchange(method="OPTIONS", target="*"))
    assert p.wire.startswith(b"OPTIONS * HTTP/1.1\r\n")


def test_a_captured_server_at_an_address_of_this_host_is_the_local_target():
    """Captured on eth0 at 192.0.2.10:8080, replayed to localhost:8080 on the same host: the same
    server."""
    policy = Policy(Target.parse("http://localhost:8080")).with_server_check(
        {("127.0.0.1", 8080)}, host=ThisHost(frozenset({ip_address("192.0.2.10")}))
    )
    with pytest.raises(ReplayRefused):
        policy.decide(make_exchange(server="192.0.2.10:8080"))
    assert isinstance(
        policy.decide(make_exchange(server="192.0.2.11:8080")), Prepared
    )  # another host
    assert isinstance(
        policy.decide(make_exchange(server="192.0.2.10:9090")), Prepared
    )  # another port


@pytest.mark.parametrize(
    "target", ["0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:7f00:1", "127.0.0.2", "::1"]
)
def test_every_spelling_of_this_host_is_the_captured_server(target):
    """Addresses are normalised (IPv4-mapped as IPv4; unspecified and loopback are this host)."""
    policy = Policy(Target.parse("http://x:18080")).with_server_check(
        {(target, 18080)}, host=ThisHost()
    )
    with pytest.raises(ReplayRefused):
        policy.decide(make_exchange(server="127.0.0.1:18080"))
    with pytest.raises(ReplayRefused):
        policy.decide(make_exchange(server="[::ffff:127.0.0.1]:18080"))
    assert isinstance(policy.decide(make_exchange(server="127.0.0.1:18081")), Prepared)


def test_the_real_peer_confirms_the_target():
    """A target whose resolved address is not this host, whose connection's peer is: refused on
    the peer (the connect hook), for servers seen before and after it."""
    policy = Policy(Target.parse("http://shadow:80")).with_server_check(
        {("192.0.2.50", 80)}, host=ThisHost()
    )
    assert isinstance(policy.decide(make_exchange(server="127.0.0.1:80")), Prepared)
    with pytest.raises(ReplayRefused):
        policy.servers.add_peer(("::ffff:127.0.0.1", 80, 0, 0))
    fresh = Policy(Target.parse("http://shadow:80")).with_server_check(
        {("192.0.2.50", 80)}, host=ThisHost()
    )
    fresh.servers.add_peer(("127.0.0.1", 80))
    with pytest.raises(ReplayRefused):
        fresh.decide(make_exchange(server="127.0.0.1:80"))


def test_headers_named_by_connection_are_dropped_and_a_set_host_wins():
    ex = make_exchange(
        headers=(("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("X-Stay", "2"))
    )
    p = prepared(Policy(TARGET), ex)
    assert header_value(p.headers, "x-hop") is None and header_value(p.headers, "x-stay") == "2"
    p = prepared(Policy(TARGET, set_headers=(("Host", "api.internal"),)), ex)
    assert [v for n, v in p.headers if n.lower() == "host"] == ["api.internal"]
