from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowtap.replay.schedule import Timing, schedule

from .conftest import make_exchange


def offsets(exchanges, timing):
    return [(s.item.index, s.copy, s.offset) for s in schedule(lambda: iter(exchanges), timing)]


def test_recorded_timing_is_anchored_to_the_first_exchange_and_scaled():
    exs = [make_exchange(t=t, index=i) for i, t in enumerate([5.0, 5.5, 7.0, 7.0])]
    assert [o for _i, _c, o in offsets(exs, Timing(speed=1))] == [0.0, 0.5, 2.0, 2.0]
    assert [o for _i, _c, o in offsets(exs, Timing(speed=2))] == [0.0, 0.25, 1.0, 1.0]
    assert [o for _i, _c, o in offsets(exs, Timing(speed=0.5))] == [0.0, 1.0, 4.0, 4.0]


def test_max_speed_has_no_offsets():
    exs = [make_exchange(t=t, index=i) for i, t in enumerate([0.0, 1.0])]
    assert [o for _i, _c, o in offsets(exs, Timing(speed=None))] == [None, None]


def test_fixed_rate_ignores_recorded_timing_and_spaces_every_copy():
    exs = [make_exchange(t=t, index=i) for i, t in enumerate([0.0, 100.0, 100.5])]
    got = offsets(exs, Timing(rate=4, amplify=2))
    assert [o for _i, _c, o in got] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert [(i, c) for i, c, _o in got] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


def test_amplify_under_recorded_timing_sends_copies_together():
    exs = [make_exchange(t=t, index=i) for i, t in enumerate([0.0, 1.0])]
    assert offsets(exs, Timing(speed=1, amplify=3)) == [
        (0, 0, 0.0),
        (0, 1, 0.0),
        (0, 2, 0.0),
        (1, 0, 1.0),
        (1, 1, 1.0),
        (1, 2, 1.0),
    ]


def test_loop_shifts_each_pass_by_span_plus_mean_gap_and_numbers_copies():
    exs = [make_exchange(t=t, index=i) for i, t in enumerate([0.0, 1.0, 2.0])]
    got = offsets(exs, Timing(speed=1, loop=2, amplify=2))
    assert [o for _i, _c, o in got] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0]
    assert [c for _i, c, _o in got][6:] == [2, 3, 2, 3, 2, 3]


def test_duration_cuts_the_schedule_and_loop_zero_runs_until_it():
    exs = [make_exchange(t=t, index=i) for i, t in enumerate([0.0, 1.0])]
    got = offsets(exs, Timing(speed=1, loop=0, duration=5.0))
    assert [o for _i, _c, o in got] == [0.0, 1.0, 2.0, 3.0, 4.0]
    got = offsets(exs, Timing(rate=10, loop=0, duration=1.0))
    assert len(got) == 10


def test_empty_input_ends_even_when_looping_forever():
    assert offsets([], Timing(speed=1, loop=0, duration=10)) == []


def test_bad_timing_values_are_refused():
    for kwargs in (
        {"speed": 0},
        {"speed": -1},
        {"rate": 0},
        {"amplify": 0},
        {"loop": 0},
        {"duration": -1},
        {"speed": float("inf")},
    ):
        with pytest.raises(ValueError):
            Timing(**kwargs)


@given(
    st.lists(st.floats(min_value=0, max_value=1e5, allow_nan=False), min_size=1, max_size=50),
    st.floats(min_value=0.01, max_value=100),
)
def test_offsets_never_accumulate_error(times, speed):
    """Offset i depends only on t_i and t_0: no sum of rounded gaps, whatever the input order."""
    exs = [make_exchange(t=t, index=i) for i, t in enumerate(times)]
    got = offsets(exs, Timing(speed=speed))
    for (_i, _c, o), t in zip(got, times):
        assert o == (t + 1_700_000_000.0 - (times[0] + 1_700_000_000.0)) / speed
