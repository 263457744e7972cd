"""lab.core.profiles: the TIME_WAIT lengths and Linux's timer-wheel slack."""

from __future__ import annotations

import pytest

from lab.core.profiles import get_profile, linux_timer_slack_s


@pytest.mark.parametrize(("hz", "slack"), [(250, 2.048), (100, 5.12), (1000, 4.096), (300, 512 / 300)])
def test_a_60_s_timer_lands_in_the_third_wheel_level_or_the_fourth(hz: int, slack: float) -> None:
    """kernel/time/timer.c: 6000 jiffies (HZ=100) and 15000 (HZ=250) fall in level 3 (512-jiffy buckets),
    60000 (HZ=1000) in level 4 (4096); measured here: TIME_WAIT lasted 60.6-62.1 s at HZ=250 and ~64.5 s in
    the HZ=100 user-mode guests (docs/kernel-facts.md §5, §15)."""
    assert linux_timer_slack_s(60.0, hz) == pytest.approx(slack)


def test_short_timers_land_in_finer_levels() -> None:
    assert linux_timer_slack_s(0.2, 250) == pytest.approx(1 / 250)        # 50 jiffies: level 0
    assert linux_timer_slack_s(1.0, 250) == pytest.approx(8 / 250)        # 250 jiffies: level 1


def test_an_overridden_profile_keeps_its_rules() -> None:
    p = get_profile("linux", 30)
    assert (p.time_wait_s, p.restart_on_any_ack, p.min_rto_s) == (30.0, True, 0.2)
    with pytest.raises(ValueError):
        get_profile("plan9")
