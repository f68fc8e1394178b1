"""CircuitBreaker state machine on a fake clock, and its one-probe promise under real threads."""

from __future__ import annotations

import logging
import math
import threading

import pytest

from fmredis.breaker import CircuitBreaker
from tests.fakes import FakeClock


def test_opens_after_the_threshold_of_consecutive_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=10, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # a success resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_after_the_cooldown_exactly_one_probe_goes_through(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10, clock=clock)
    breaker.record_failure()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state == "half-open"
    assert breaker.allow()
    assert not breaker.allow()  # the probe is in flight
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()


def test_a_failed_probe_reopens_for_a_full_cooldown(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10, clock=clock)
    breaker.record_failure()
    clock.now += 10
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 9
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_a_released_probe_lets_another_caller_probe(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=0, clock=clock)
    breaker.record_failure()
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_each_transition_is_logged_once(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown=5, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="fmredis"):
        for _ in range(10):
            breaker.record_failure()
            breaker.allow()
        clock.now += 5
        for _ in range(10):
            breaker.allow()
        breaker.record_success()
        for _ in range(10):
            breaker.allow()
            breaker.record_success()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "Circuit breaker redis open after 2 consecutive failures",
        "Circuit breaker redis half-open",
        "Circuit breaker redis closed",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"failure_threshold": 1.5},
        {"cooldown": -1},
        {"cooldown": math.inf},
        {"cooldown": math.nan},
        {"cooldown": 86_401},  # durations are bounded to a day
        {"cooldown": 1e10},
    ],
    ids=repr,
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    [name] = kwargs
    with pytest.raises(ValueError, match=name):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
    assert CircuitBreaker(**{name: 1}).allow()  # the control: the same setting in range is taken


def test_only_one_of_many_threads_gets_the_half_open_probe(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10, clock=clock)
    breaker.record_failure()
    clock.now += 10
    start = threading.Barrier(32)
    allowed: list[bool] = []
    lock = threading.Lock()

    def contend() -> None:
        start.wait()
        result = breaker.allow()
        with lock:
            allowed.append(result)

    threads = [threading.Thread(target=contend) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(allowed) == [False] * 31 + [True]


def test_a_trial_takes_the_probe_during_the_cooldown_and_is_reported_like_any_call(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10, clock=clock)
    assert not breaker.trial()  # closed: nothing to take, the call just goes through
    breaker.record_failure()
    assert not breaker.allow()  # cooling down
    assert breaker.trial() and breaker.state == "half-open"
    assert not breaker.trial() and not breaker.allow()  # one probe at a time
    breaker.record_failure()
    assert breaker.state == "open"  # a failed trial re-opens for a full cool-down
    assert breaker.trial()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()


def test_an_outage_logs_one_warning_however_many_probes_fail(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    assert breaker.cooldown == 0.25  # short by default: a returned server is found within a quarter second
    with caplog.at_level(logging.INFO, logger="fmredis"):
        breaker.record_failure()
        for _ in range(20):
            clock.now += 0.25
            assert breaker.allow()
            breaker.record_failure()
        breaker.trial()
        breaker.record_success()
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records] == [
        ("WARNING", "Circuit breaker redis open after 1 consecutive failures"),
        ("INFO", "Circuit breaker redis closed"),
    ]
