"""``shadowtap COMMAND`` imports COMMAND's module alone (typer then builds that command's options
only); ``--help`` and unknown names import every command's."""

from __future__ import annotations

import subprocess
import sys

from shadowtap.cli import _MODULES, _register, app


def test_every_command_is_mapped_to_its_module():
    _register()
    for info in app.registered_commands:
        assert info.callback is not None
        name = info.name or info.callback.__name__
        assert name in _MODULES, f"{name}: add it to shadowtap.cli._MODULES"
        assert info.callback.__module__ == f"shadowtap.cli.{_MODULES[name]}"


def _loaded(*args: str) -> tuple[str, set[str]]:
    """The help printed and the command modules imported by ``shadowtap ARGS`` (a fresh process)."""
    code = (
        "import sys\n"
        f"sys.argv = ['shadowtap', *{list(args)!r}]\n"
        "from shadowtap.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "mods = [m for m in sys.modules if m.startswith('shadowtap.cli.')]\n"
        "print(' '.join(m for m in mods if m != 'shadowtap.cli.options'), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return proc.stdout, set(proc.stderr.strip().splitlines()[-1].split())


def test_a_command_imports_its_module_alone():
    out, loaded = _loaded("doctor", "--help")
    assert "Check every prerequisite" in out
    assert loaded == {"shadowtap.cli.capture"}


def test_the_command_list_shows_every_command():
    out, loaded = _loaded("--help")
    for name in _MODULES:
        assert name in out
    assert loaded == {f"shadowtap.cli.{m}" for m in _MODULES.values()}
