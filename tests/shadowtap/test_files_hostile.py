"""Output files in directories other users can reach (issue 12 item 9): planted symbolic links and
hard links, world-writable directories owned by someone else, through the real commands."""

from __future__ import annotations

import os
import stat

import pytest

from shadowtap.errors import InputError
from shadowtap.jsonl import JsonlWriter, check_directory, create_private
from tests.support.prereq import require_root
from tests.support.proc import shadowtap

NOBODY = 65534
PCAP = os.path.join(
    os.path.dirname(__file__), "..", "data", "suricata", "http-chunked", "input.pcap"
)


@pytest.fixture
def victim(tmp_path):
    """A file the attacker wants overwritten (root's, say), outside the output directory."""
    secret = tmp_path / "victim"
    secret.mkdir(mode=0o700)
    f = secret / "important.conf"
    f.write_text("keep me\n")
    return f


def test_a_symlink_planted_by_another_user_is_not_followed(tmp_path, victim):
    require_root()  # to plant a link owned by another user
    out = tmp_path / "out"
    out.mkdir(mode=0o755)
    link = out / "exchanges.jsonl"
    link.symlink_to(victim)
    os.lchown(link, NOBODY, NOBODY)
    p = shadowtap("extract", PCAP, "-o", str(link))
    assert p.returncode == 3, p.stderr
    assert "refusing to follow a symbolic link owned by uid 65534" in p.stderr
    assert victim.read_text() == "keep me\n"
    with pytest.raises(InputError, match="symbolic link"):
        JsonlWriter(str(link))


def test_a_symlink_of_the_callers_own_is_followed(tmp_path):
    target = tmp_path / "real.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    p = shadowtap("extract", PCAP, "-o", str(link))
    assert p.returncode == 0, p.stderr
    assert target.read_bytes().count(b"\n") >= 1 and link.is_symlink()
    p = shadowtap("extract", PCAP, "-o", "/dev/stdout")  # a root-owned link to a device
    assert p.returncode == 0 and p.stdout.count("\n") >= 1, p.stderr


def test_a_hard_link_to_another_file_is_refused(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    planted = out / "exchanges.jsonl"
    os.link(victim, planted)
    p = shadowtap("extract", PCAP, "-o", str(planted))
    assert p.returncode == 3 and "hard links" in p.stderr, p.stderr
    assert victim.read_text() == "keep me\n"


def test_a_directory_others_can_write_and_do_not_own_is_refused(tmp_path):
    require_root()  # to make a directory owned by another user
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    os.chown(shared, NOBODY, NOBODY)
    for args in (("extract", PCAP, "-o", str(shared / "x.jsonl")),):
        p = shadowtap(*args)
        assert p.returncode == 3, p.stderr
        assert "refusing a directory other users can write (mode 1777, owner uid 65534)" in p.stderr
    assert list(shared.iterdir()) == []
    with pytest.raises(InputError, match="other users can write"):
        check_directory(str(shared))
    # The same directory owned by the caller is the caller's business (root's /tmp).
    os.chown(shared, os.geteuid(), os.getegid())
    check_directory(str(shared))


def test_in_a_shared_directory_a_file_of_another_user_is_refused(tmp_path):
    require_root()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # owned by root (the caller), like /tmp
    planted = shared / "out.jsonl"
    planted.write_text("the attacker reads what lands here\n")
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(InputError, match="belongs to uid 65534"):
        create_private(str(planted))
    assert planted.read_text().startswith("the attacker")


def test_an_existing_file_of_the_caller_is_truncated_and_made_private(tmp_path):
    f = tmp_path / "old.jsonl"
    f.write_text("old content\n")
    f.chmod(0o644)
    with create_private(str(f)) as out:
        out.write(b"new\n")
    assert f.read_text() == "new\n" and stat.S_IMODE(f.stat().st_mode) == 0o600


def test_the_mirror_refuses_a_run_directory_others_can_write(tmp_path):
    require_root()
    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o777)
    os.chown(shared, NOBODY, NOBODY)
    p = shadowtap(
        "mirror",
        "-i",
        "lo",
        "-p",
        "9",
        "-s",
        "http://127.0.0.1:9",
        "--run-dir",
        str(shared),
        "--duration",
        "1",
        "--force",
    )
    assert p.returncode == 3, p.stderr
    assert "refusing a directory other users can write" in p.stderr
    assert list(shared.iterdir()) == []
