"""shadowtap/frozen.py: the cheaper __init__ behaves as the one dataclasses generates."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import pytest

from shadowtap import records
from shadowtap.capture.extractor import RequestEvent
from shadowtap.frozen import fast_init
from shadowtap.mirror.capture_child import Captured
from shadowtap.mirror.pairing import Pair
from shadowtap.mirror.sender import Pending
from shadowtap.replay.policy import Prepared


def _twins() -> tuple[type, type]:
    def make() -> type:
        @dataclass(frozen=True, slots=True)
        class Rec:
            a: int
            b: str = "b"
            c: tuple[int, ...] = field(default_factory=lambda: (1, 2))
            d: int = field(default=0, init=False)
            e: float = field(default=1.5, kw_only=True)

            def __post_init__(self) -> None:
                if self.a < 0:
                    raise ValueError("a must be >= 0")

        return Rec

    return make(), fast_init(make())


def test_same_values_defaults_factories_keywords_and_validation():
    plain, fast = _twins()
    for args, kwargs in (((1,), {}), ((1, "x"), {"e": 2.0}), ((3,), {"c": (), "b": "y"})):
        p, f = plain(*args, **kwargs), fast(*args, **kwargs)
        assert dataclasses.astuple(p) == dataclasses.astuple(f)
    assert fast(1).c == (1, 2) and fast(1).d == 0
    with pytest.raises(ValueError, match="a must be"):
        fast(-1)
    with pytest.raises(TypeError):
        fast(1, "x", (), 2.0)  # e is keyword-only
    with pytest.raises(TypeError):
        fast(1, d=3)  # init=False
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast(1).a = 2  # type: ignore[misc]
    assert dataclasses.replace(fast(1), a=5).a == 5
    assert list(inspect.signature(fast.__init__).parameters) == list(
        inspect.signature(plain.__init__).parameters
    )


@pytest.mark.parametrize(
    "cls",
    [
        records.Request,
        records.Response,
        records.Exchange,
        records.Result,
        records.ResultError,
        Prepared,
        Pending,
        Captured,
        RequestEvent,
        Pair,
    ],
)
def test_the_hot_records_take_the_same_parameters(cls):
    """Each record made per request has the cheaper __init__, with the parameters (names, kinds,
    order) of the generated one."""
    assert cls.__init__.__module__ == cls.__module__
    ours = inspect.signature(cls.__init__).parameters
    fields = [f for f in dataclasses.fields(cls) if f.init]
    assert list(ours)[1:] == [f.name for f in fields]
    for f in fields:
        kind = (
            inspect.Parameter.KEYWORD_ONLY if f.kw_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        assert ours[f.name].kind is kind
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        assert (ours[f.name].default is not inspect.Parameter.empty) is has_default


def test_records_still_validate():
    with pytest.raises(ValueError, match="before ts"):
        records.Request(2.0, 1.0, "HTTP/1.1", ())
