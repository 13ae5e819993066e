from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import CompareConfig, EndpointConfig, EndpointRule
from shadowtap.compare.endpoints import Templater, split_path


def test_ids_become_parameters():
    t = Templater()
    assert t.endpoint("GET", "/users/123") == "GET /users/{id}"
    assert (
        t.endpoint("GET", "/users/123/orders/9f86d081884c7d65?page=2")
        == "GET /users/{id}/orders/{id}"
    )
    assert t.endpoint("DELETE", "/a/550e8400-e29b-41d4-a716-446655440000") == "DELETE /a/{id}"
    assert t.endpoint("GET", "/files/aGVsbG8gd29ybGQxMjM0NTY3") == "GET /files/{id}"
    assert t.endpoint("GET", "/api/v2/items") == "GET /api/v2/items"
    assert t.endpoint("GET", "/") == "GET /"
    assert t.endpoint("POST", "http://svc.local:8080/x/42?q=1") == "POST /x/{id}"


def test_split_path():
    assert split_path("/a/b?x=1#f") == "/a/b"
    assert split_path("https://h/p") == "/p"
    assert split_path("") == "/"


def test_high_cardinality_segments_fold():
    t = Templater(EndpointConfig(max_distinct=10))
    names = [
        t.endpoint("GET", f"/users/{n}/profile")
        for n in (
            "alice",
            "bob",
            "carol",
            "dave",
            "erin",
            "frank",
            "grace",
            "heidi",
            "ivan",
            "judy",
            "mallory",
            "oscar",
        )
    ]
    assert names[-1] == "GET /users/{id}/profile"
    assert t.retemplate(names[0]) == "GET /users/{id}/profile"
    # a small fixed set of literal segments stays literal
    assert t.endpoint("GET", "/status/health") == "GET /status/health"


def test_rules_override():
    t = Templater(
        EndpointConfig(
            rules=(
                EndpointRule("/users/me"),
                EndpointRule("/search/{term}", "GET"),
                EndpointRule("/static/*"),
            )
        )
    )
    assert t.endpoint("GET", "/users/me") == "GET /users/me"
    assert t.endpoint("GET", "/search/shoes") == "GET /search/{term}"
    assert t.endpoint("POST", "/search/shoes") == "POST /search/shoes"
    assert t.endpoint("GET", "/static/css/site.css") == "GET /static/*"


def test_aggregates_merge_when_a_segment_turns_out_variable(craft):
    cfg = CompareConfig(endpoints=EndpointConfig(max_distinct=5))
    c = Comparison(cfg)
    for i, name in enumerate(["ann", "ben", "cat", "dan", "eve", "fay", "gus", "hal"]):
        ex = craft.exchange(i, craft.response({"a": 1}), target=f"/people/{name}")
        c.add(ex, craft.result(i, craft.response({"a": 1})))
    rep = c.snapshot()
    assert [(e.endpoint, e.pairs) for e in rep.endpoints] == [("GET /people/{id}", 8)]
