"""The terminal report on a real rich terminal console (written to a buffer) and in a pipe."""

import io

from rich.console import Console

from shadowtap import console
from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.report_terminal import render


def report(craft):
    c = Comparison()
    for i in range(40):
        p = craft.response({"items": [{"price": 1}], "note": "[/prefix] [bold]x"})
        s = craft.response(
            {"items": [{"price": 2}], "note": "[/prefix] [bold]y"}, status=500 if i == 0 else 200
        )
        c.add(craft.exchange(i, p), craft.result(i, s))
    return c.snapshot()


def test_terminal_rendering_keeps_brackets(craft, monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(
        console, "out", Console(file=buf, force_terminal=True, width=200, color_system=None)
    )
    render(report(craft))
    text = buf.getvalue()
    assert text.startswith("verdict: FAIL")
    assert "body.items[].price" in text and "[/prefix] [bold]x" in text


def test_plain_rendering_in_a_pipe(craft, capsys):
    render(report(craft))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("verdict: FAIL")
    assert "# endpoints (ranked by divergence)" in lines
    assert any(line.startswith("body.items[].price\t") for line in lines)
