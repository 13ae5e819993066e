"""The typed report (compare/report.py) is the JSON schema: the records' fields, in the order
declared, are the JSON's keys, the optional ones left out when None; the verdicts' exit codes and
colours come from one table."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import orjson

from shadowtap.compare.report import (
    FieldReport,
    GroupScore,
    Record,
    Report,
    Summary,
    Verdict,
    as_json,
)
from shadowtap.compare.report_json import dumps
from shadowtap.errors import EXIT_OK, EXIT_VERDICT_ERROR, EXIT_VERDICT_FAIL, EXIT_VERDICT_MARGINAL


def _reference(value: Any) -> Any:
    """The JSON of a report, written out by hand from dataclasses.fields (the schema's rule)."""
    if isinstance(value, Record):
        out = {}
        for f in dataclasses.fields(value):  # type: ignore[arg-type]
            v = getattr(value, f.name)
            if v is None and f.name in type(value)._OPTIONAL:
                continue
            out[f.name] = _reference(v)
        return out
    if isinstance(value, dict):
        return {k: _reference(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_reference(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value.value if isinstance(value, Verdict) else value


def _rich_report(craft) -> Report:
    """A report with every kind of part: fields (categorical, renamed), drift, noise, errors."""

    def make(i):
        p = {
            "id": i,
            "name": f"n{i}",
            "label": ["a", "b"][i % 2],
            "score": i / 7,
            "at": craft.iso(craft.T0 + i),
        }
        s = dict(p, score=i / 7 + 0.5, at=craft.iso(craft.T0 + i + 2))
        s["title"] = s.pop("name")
        if i % 5 == 0:
            s["label"] = "c"
        status = 503 if i % 17 == 0 else 200
        return (
            craft.exchange(i, craft.response(p), target=f"/items/{i % 3}"),
            craft.result(i, craft.response(s, status=status), latency_ms=12.0 + i % 5),
        )

    return craft.run(120, make)


def test_the_json_is_the_records_fields_in_order(craft):
    rep = _rich_report(craft)
    assert any(f.renamed_to for e in rep.endpoints for f in e.fields)
    assert any(f.agreement is not None for e in rep.endpoints for f in e.fields)
    options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    assert dumps(rep) == orjson.dumps(_reference(rep), option=options)
    assert orjson.loads(dumps(rep)) == orjson.loads(orjson.dumps(as_json(rep)))
    assert "interrupted" not in orjson.loads(dumps(rep))["summary"]
    assert orjson.loads(dumps(rep.interrupted()))["summary"]["interrupted"] is True


def test_optional_keys_are_left_out_only_when_none():
    f = FieldReport(
        path="body.x",
        kinds={"value": 1},
        diff_pairs=1,
        rate=0.5,
        baseline_rate=None,
        noise=None,
        type="other",
        only_extra=False,
        flips=[],
        samples=[],
    )
    assert list(f.to_json()) == [
        "path",
        "kinds",
        "diff_pairs",
        "rate",
        "baseline_rate",
        "noise",
        "type",
        "only_extra",
        "flips",
        "samples",
    ]
    g = dataclasses.replace(f, agreement=0.0, renamed_to="body.y")
    assert g.to_json()["agreement"] == 0.0 and g.to_json()["renamed_to"] == "body.y"
    assert "renamed_from" not in g.to_json()
    assert GroupScore(1, 1, 30.0, 100.0).to_json() == {
        "metrics": 1,
        "passed": 1,
        "weight": 30.0,
        "score": 100.0,
    }
    assert "interrupted" in Summary._OPTIONAL


def test_verdicts_exit_codes_and_colours_in_one_table():
    assert [(v.value, v.exit_code) for v in Verdict] == [
        ("pass", EXIT_OK),
        ("marginal", EXIT_VERDICT_MARGINAL),
        ("fail", EXIT_VERDICT_FAIL),
        ("error", EXIT_VERDICT_ERROR),
    ]
    assert all(v.style.startswith("bold ") and v.html_colour.startswith("#") for v in Verdict)


def test_the_mirrors_overruled_verdict(craft):
    rep = _rich_report(craft)
    over = rep.overruled(Verdict.ERROR, "only 1 of 10 compared")
    assert over.verdict.result is Verdict.ERROR and over.verdict.exit_code == EXIT_VERDICT_ERROR
    assert over.verdict.reasons[0] == "only 1 of 10 compared"
    assert over.verdict.reasons[1:] == rep.verdict.reasons
