"""shadowtap.console makes its rich consoles on first use: a command writing plain lines to a pipe
never imports rich (~0.05 s of CPU at start-up), and says what rich would say wherever rich
could judge a stream a terminal."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    return proc.stdout.strip()


CHECK = (
    "import sys\n"
    "from shadowtap import console\n"
    "console.table('t', ['a', 'b'], [['x', 1]])\n"
    "got = console.interactive()\n"
    "print('rich' in sys.modules, got)\n"
)


def test_a_pipe_needs_no_rich():
    assert _run(CHECK).splitlines()[-1] == "False False"


def test_forced_colour_asks_rich():
    # FORCE_COLOR makes rich judge even a pipe a terminal: the shortcut must not answer
    assert _run(CHECK, FORCE_COLOR="1").splitlines()[-1] == "True True"
    assert _run(CHECK, TTY_COMPATIBLE="1").splitlines()[-1] == "True True"
