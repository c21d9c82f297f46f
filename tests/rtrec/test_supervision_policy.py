"""The restart policy of ``rtrec up`` (rtrec.stack.supervision.RestartPolicy), step by step, as pure
logic: the time is passed in, nothing runs."""

from __future__ import annotations

import pytest

from rtrec.settings import Settings
from rtrec.stack.supervision import BACKOFF_S, RestartPolicy, exit_status


def test_restarts_in_a_row_back_off_along_the_schedule_and_stay_at_its_cap():
    policy = RestartPolicy(max_restarts=100, window_s=1e9)
    delays = [policy.on_death(now=float(n), up_s=1.0) for n in range(len(BACKOFF_S) + 3)]
    assert delays == [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 30.0, 30.0, 30.0]


def test_a_component_that_ran_long_enough_starts_again_from_the_first_delay():
    policy = RestartPolicy(max_restarts=100, window_s=1e9, backoff_s=(1.0, 2.0, 4.0), stable_after_s=60.0)
    assert policy.on_death(now=10.0, up_s=5.0) == 1.0
    assert policy.on_death(now=20.0, up_s=5.0) == 2.0
    assert policy.on_death(now=30.0, up_s=59.9) == 4.0  # just short of stable: the row goes on
    assert policy.on_death(now=100.0, up_s=60.0) == 1.0  # ran 60 s: a new row
    assert policy.on_death(now=110.0, up_s=5.0) == 2.0


def test_more_deaths_than_max_restarts_within_the_window_give_up():
    policy = RestartPolicy(max_restarts=2, window_s=100.0)
    assert policy.on_death(now=0.0, up_s=1.0) == 0.5
    assert policy.on_death(now=50.0, up_s=1.0) == 1.0
    assert policy.on_death(now=99.0, up_s=1.0) is None  # the third within 100 s
    assert list(policy.deaths) == [0.0, 50.0, 99.0]


def test_deaths_older_than_the_window_no_longer_count():
    policy = RestartPolicy(max_restarts=2, window_s=100.0)
    assert policy.on_death(now=0.0, up_s=1.0) == 0.5
    assert policy.on_death(now=50.0, up_s=1.0) == 1.0
    assert policy.on_death(now=100.0, up_s=1.0) == 2.0  # the death at 0 left the window at 100
    assert list(policy.deaths) == [50.0, 100.0]
    assert policy.on_death(now=120.0, up_s=1.0) is None  # 50, 100, 120: three within 100 s


def test_a_component_dying_every_few_minutes_is_restarted_for_ever():
    policy = RestartPolicy(max_restarts=1, window_s=300.0)
    delays = [policy.on_death(now=301.0 * n, up_s=290.0) for n in range(10)]
    assert delays == [0.5] * 10  # each death alone in its window, each after a stable run


def test_max_restarts_zero_gives_up_at_the_first_death():
    assert RestartPolicy(max_restarts=0, window_s=300.0).on_death(now=1.0, up_s=1e6) is None


@pytest.mark.parametrize("kwargs", [{"max_restarts": -1}, {"window_s": 0.0}, {"backoff_s": ()},
                                    {"backoff_s": (1.0, -1.0)}])
def test_a_nonsensical_policy_is_refused(kwargs: dict):
    with pytest.raises(ValueError):
        RestartPolicy(**{"max_restarts": 5, "window_s": 300.0, **kwargs})


def test_the_settings_default_to_five_restarts_in_five_minutes():
    fields = Settings.model_fields
    assert (fields["stack_max_restarts"].default, fields["stack_restart_window_s"].default) == (5, 300.0)


def test_exit_status_names_the_signal_that_ended_a_process():
    assert [exit_status(c) for c in (0, 2, -9, -15, None)] == [
        "exit code 0", "exit code 2", "signal SIGKILL", "signal SIGTERM", "no exit code"]
