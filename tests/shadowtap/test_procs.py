"""shadowtap/procs.py: child processes forked, talked to, stopped and reaped in one way."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import pytest

from shadowtap.errors import InputError
from shadowtap.procs import ChildDied, Signals, Stop, codec_for, spawn


@dataclass(frozen=True, slots=True)
class Hello:
    pid: int


CODEC = codec_for([Hello])


def _returns(ctx, value):
    ctx.channel.send(Hello(os.getpid()))
    return value


def _raises(ctx):
    raise InputError("bad record", where="x.pcap at byte 9", hint="re-capture")


def _waits(ctx):
    ctx.channel.send(Hello(os.getpid()))
    ctx.stop.wait(30)
    return "stopped" if ctx.stop.is_set() else "timed out"


def _sleeps(ctx):
    ctx.channel.send(Hello(os.getpid()))
    time.sleep(30)
    return "slept"


def test_value_and_messages_come_back():
    child = spawn(_returns, 42, name="t", codec=CODEC)
    got = []
    assert child.result(10, on_message=got.append) == 42
    assert got == [Hello(child.pid)]
    child.reap(5)
    assert child.proc.exitcode == 0


def test_an_error_comes_back_as_the_same_class():
    child = spawn(_raises, name="t", codec=CODEC)
    with pytest.raises(InputError) as info:
        child.result(10)
    assert info.value.where == "x.pcap at byte 9" and info.value.hint == "re-capture"
    assert str(info.value) == "x.pcap at byte 9: bad record"
    child.reap(5)


def test_a_killed_child_is_a_clear_error():
    child = spawn(_sleeps, name="worker", codec=CODEC)
    assert isinstance(child.take(10), Hello)
    os.kill(child.pid, signal.SIGKILL)
    with pytest.raises(ChildDied, match=r"the worker process died \(killed by SIGKILL\)"):
        child.result(10)
    child.reap(5)


def test_stop_message_and_stop_signal_set_the_childs_stop():
    child = spawn(_waits, name="t", codec=CODEC, watch=True)
    assert isinstance(child.take(10), Hello)
    child.stop()
    assert child.result(10) == "stopped"
    child.reap(5)
    child = spawn(_waits, name="t", codec=CODEC, signals={signal.SIGTERM: Signals.STOP})
    assert isinstance(child.take(10), Hello)
    os.kill(child.pid, signal.SIGTERM)
    assert child.result(10) == "stopped"
    child.reap(5)


def test_sigint_dispositions_do_not_depend_on_the_parents():
    """Under `nohup … &` a process starts with SIGINT ignored, and a child inherits that: the
    dispositions are set explicitly, so Ctrl-C does what the child asked for either way."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup
    try:
        default = spawn(_sleeps, name="t", codec=CODEC, signals={signal.SIGINT: Signals.DEFAULT})
        ignored = spawn(
            _waits, name="t", codec=CODEC, watch=True
        )  # IGNORE by default: the parent decides
    finally:
        signal.signal(signal.SIGINT, previous)
    signal.signal(
        signal.SIGINT, signal.default_int_handler
    )  # and the reverse: a parent that takes it
    try:
        stopping = spawn(_waits, name="t", codec=CODEC, signals={signal.SIGINT: Signals.STOP})
    finally:
        signal.signal(signal.SIGINT, previous)
    for c in (default, ignored, stopping):
        assert isinstance(c.take(10), Hello)
        os.kill(c.pid, signal.SIGINT)
    default.proc.join(10)
    assert default.proc.exitcode == 130  # KeyboardInterrupt: ends at once
    assert stopping.result(10) == "stopped"
    ignored.stop()  # it outlived the SIGINT: it still answers the Stop message
    assert ignored.result(10) == "stopped"
    for c in (default, stopping, ignored):
        c.reap(5)


def test_stop_is_a_record_of_the_channel():
    assert CODEC.loads(CODEC.dumps(Stop())) == Stop()
