from shadowtap.compare.join import Joiner, join


def ids(triples):
    return [(e.id, r.copy, b.exchange_id if b else None) for e, r, b in triples]


def test_out_of_order_results_and_unmatched(craft):
    exs = [craft.exchange(i, craft.response({"i": i})) for i in range(6)]
    res = [craft.result(i, craft.response({"i": i})) for i in (3, 1, 0, 2, 9)]
    j = Joiner(baseline=False)
    out = list(join(iter(exs), iter(res), None, j, chunk=2))
    assert sorted(x[0] for x in ids(out)) == ["ex000000", "ex000001", "ex000002", "ex000003"]
    assert (j.unmatched_exchanges, j.unmatched_results) == (2, 1)


def test_copies_of_one_exchange(craft):
    exs = [craft.exchange(0, craft.response({}))]
    res = [craft.result(0, craft.response({}), copy=c) for c in range(3)]
    j = Joiner(baseline=False)
    assert ids(join(iter(exs), iter(res), None, j)) == [("ex000000", c, None) for c in range(3)]


def test_baseline_joined_when_it_comes_and_optional_when_it_does_not(craft):
    exs = [craft.exchange(i, craft.response({})) for i in range(3)]
    res = [craft.result(i, craft.response({})) for i in range(3)]
    base = [craft.result(i, craft.response({})) for i in (2, 0)]
    j = Joiner(baseline=True)
    got = sorted(ids(join(iter(exs), iter(res), iter(base), j, chunk=1)))
    assert got == [("ex000000", 0, "ex000000"), ("ex000001", 0, None), ("ex000002", 0, "ex000002")]
