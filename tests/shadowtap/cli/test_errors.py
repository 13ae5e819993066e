"""Errors about fields become errors about flags at one boundary (shadowtap/cli/__init__.py): the
stages raise ``InputError(field="target")``; ``shadowtap replay`` says ``--target: ...`` and
``shadowtap mirror`` says ``--shadow: ...`` for the same field. The messages are the ones users saw
before the stages stopped naming flags (no root, no network: every case fails before anything is
read, attached or sent)."""

import pytest

from shadowtap.cli import flag_for, user_error
from shadowtap.errors import InputError, TargetError
from tests.support.proc import shadowtap

MIRROR = ("mirror", "--iface", "lo", "--port", "8080")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("replay", "in.jsonl", "--target", "ftp://127.0.0.1:9"),
            "--target: target must be an http:// or https:// URL, not 'ftp://127.0.0.1:9'",
        ),
        (
            ("replay", "in.jsonl", "--target", "http://127.0.0.1:9", "--sample-key", "bogus"),
            "--sample-key: sample key must be 'client' or 'header:NAME', not 'bogus'",
        ),
        (
            ("replay", "in.jsonl", "--target", "http://127.0.0.1:9", "--header", "=x"),
            "--header: '=x' is not 'NAME' or 'NAME=REGEX'",
        ),
        (
            ("replay", "in.jsonl", "--target", "http://127.0.0.1:9", "--set-header", "NoColon"),
            "--set-header: 'NoColon' is not 'Name: value'",
        ),
        (
            ("replay", "in.jsonl", "--target", "http://127.0.0.1:9", "--path", "("),
            "--path: bad regular expression '('",
        ),
        (
            ("replay", "in.jsonl", "--target", "http://127.0.0.1:9", "--json", "-o", "-"),
            "--json: the results go to stdout (-o -): the JSON summary cannot too",
        ),
        (
            ("compare", "a.jsonl", "b.jsonl", "--ignore", "GET /x::"),
            "--ignore: empty path in ignore rule 'GET /x::'",
        ),
        (
            (*MIRROR, "--shadow", "ftp://127.0.0.1:9"),
            "--shadow: target must be an http:// or https:// URL, not 'ftp://127.0.0.1:9'",
        ),
        (
            (*MIRROR, "--shadow", "http://127.0.0.1:9", "--metrics", "not-an-address"),
            "--metrics: 'not-an-address' is not ADDR:PORT",
        ),
        (
            (*MIRROR, "--shadow", "http://127.0.0.1:9", "--allow", "POST"),
            "--allow: route 'POST' is not 'METHOD /path'",
        ),
    ],
)
def test_the_cli_names_the_flag_of_the_field(args, message):
    proc = shadowtap(*args)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith(f"shadowtap: error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_flag_for_fields_by_command():
    assert flag_for("target", "replay") == "--target"
    assert flag_for("target", "mirror") == "--shadow"
    assert flag_for("sample_percent", "replay") == "--sample"
    assert flag_for("sample_percent", "mirror") == "--percent"
    assert flag_for("max_body", "extract") == "--max-body"
    assert flag_for("ports", "capture") == "--port"
    assert flag_for("bpf_filter", "extract") == "--filter"


def test_user_error_keeps_class_hint_and_places_only_field_errors():
    err = InputError("must be positive", field="rotate_size", hint="a size in bytes")
    assert str(err) == "rotate_size: must be positive" and err.field == "rotate_size"
    shown = user_error(err)
    assert type(shown) is InputError and shown.hint == "a size in bytes"
    assert str(shown) == "--rotate-size: must be positive" and shown.field == "rotate_size"
    at_a_file = InputError("bad line", where="x.jsonl line 3")
    assert user_error(at_a_file) is at_a_file
    other = TargetError("unreachable")
    assert user_error(other) is other
