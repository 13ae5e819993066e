import json

import pytest

from shadowtap.compare.config import DEFAULT_NOISY_HEADERS, CompareConfig, load_config
from shadowtap.errors import InputError

TOML = """
[headers]
extra_noisy = ["X-Build"]
compare = ["etag"]

[noise]
relative_threshold = 0.5
[[noise.rules]]
path = "body.meta.*"
endpoint = "GET /v1/*"
reason = "build metadata"

[numeric]
rel = 0.001
[[numeric.paths]]
path = "body.score"
abs = 0.05

[endpoints]
max_distinct = 10
[[endpoints.rules]]
template = "/users/me"

[latency]
effect = 1.5

[verdict]
pass_score = 90
critical = ["errors"]
[verdict.weights]
errors = 50
latency = 10
content = 30
model = 10
"""


def test_toml_config(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(TOML)
    cfg = load_config(str(p))
    ign = cfg.headers.ignored()
    assert "x-build" in ign and "etag" not in ign and "date" in ign
    assert cfg.noise.relative_threshold == 0.5 and cfg.noise.absolute_threshold == 0.0003
    assert cfg.noise.rules[0].matches("GET /v1/items", "body.meta.build")
    assert cfg.numeric.tolerance("body.score") == (0.05, 0.0)
    assert cfg.numeric.tolerance("body.other") == (0.0, 0.001)
    assert cfg.endpoints.max_distinct == 10 and cfg.endpoints.rules[0].template == "/users/me"
    assert cfg.latency.effect == 1.5 and cfg.latency.alpha == 0.01
    assert cfg.verdict.pass_score == 90 and cfg.verdict.weight("errors") == 50
    assert cfg.verdict.critical == ("errors",)


def test_json_config_and_defaults(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"content": {"max_rate": 0.05}}))
    cfg = load_config(str(p))
    assert cfg.content.max_rate == 0.05 and cfg.headers.noisy == DEFAULT_NOISY_HEADERS
    assert load_config(None) == CompareConfig()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[latency]\neffekt = 2\n", "unknown key latency.effekt"),
        ("[latency]\neffect = 'fast'\n", "latency.effect must be a number"),
        ("[noise]\norder_is_noise = 1\n", "must be true or false"),
        ("[[noise.rules]]\nendpoint = 'x'\npath = 'a'\nwhy = 'b'\n", "unknown key noise.rules.why"),
        ("[latency\n", "not valid TOML"),
        ("[verdict]\npass_score = nan\n", "verdict.pass_score must be a finite number"),
        ("[verdict]\npass_score = inf\n", "verdict.pass_score must be a finite number"),
        ("[verdict]\npass_score = 120\n", "verdict.pass_score must be within 0..100"),
        (
            "[verdict]\nmarginal_score = 99\n",
            "verdict.marginal_score must not be above verdict.pass_score",
        ),
        ("[verdict.weights]\nerrors = -1\n", "verdict.weights.errors must be >= 0"),
        ("[limits]\nmax_fields = -5\n", "limits.max_fields must be >= 0"),
        ("[limits]\nlatency_sample = 2.5\n", "limits.latency_sample must be a whole number"),
        ("[limits]\nsnapshot_budget_ms = -1.0\n", "limits.snapshot_budget_ms must be >= 0"),
        ("[noise]\nvolatile_share = 1.5\n", "noise.volatile_share must be within 0..1"),
        ("[latency]\nmin_ms = -inf\n", "latency.min_ms must be a finite number"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(InputError) as exc:
        load_config(str(p))
    assert message in str(exc.value) and str(p) in str(exc.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="cannot read config"):
        load_config(str(tmp_path / "nope.toml"))


def test_effective_config_round_trips_through_a_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(TOML)
    cfg = load_config(str(p))
    again = tmp_path / "again.json"
    again.write_text(json.dumps(cfg.to_json()))
    assert load_config(str(again)) == cfg


def test_nan_in_a_json_config_is_rejected(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"verdict": {"pass_score": NaN}}')
    with pytest.raises(InputError, match="verdict.pass_score must be a finite number"):
        load_config(str(path))
