"""shadowtap/cli/mirror.py: the command's help and its refusals of bad options, before anything
is attached or sent (no root, no network: every case fails before the capture starts)."""

import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", "mirror", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_renders_every_option():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for option in (
        "--iface",
        "--port",
        "--shadow",
        "--backend",
        "--percent",
        "--rate-limit",
        "--queue",
        "--allow-unsafe",
        "--metrics",
        "--run-dir",
        "--duration",
        "--allow",
        "--host-suffix",
    ):
        assert option in proc.stdout, option


BASE = ("--iface", "lo", "--port", "8080")


def test_bad_options_are_input_errors_naming_the_option():
    cases = [
        (("--shadow", "http://127.0.0.1:9", "--backend", "bogus"), "--backend"),
        (("--shadow", "ftp://127.0.0.1:9"), "--shadow"),
        (("--shadow", "http://127.0.0.1:9", "--metrics", "not-an-address"), "--metrics"),
        (("--shadow", "http://127.0.0.1:9", "--allow", "POST"), "--allow"),
        (("--shadow", "http://127.0.0.1:9", "--rewrite", "no-arrow"), "--rewrite"),
    ]
    for args, where in cases:
        proc = _run(*BASE, *args)
        assert proc.returncode == 3, (args, proc.stderr)
        assert where in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_the_primary_itself_is_refused():
    proc = _run(*BASE, "--shadow", "http://127.0.0.1:8080")
    assert proc.returncode == 5 and "the primary itself" in proc.stderr
