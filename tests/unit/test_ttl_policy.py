"""Pure-logic tests of fmredis.ttl_policy.SessionTTLManager and fmredis.serialization.parse_utc.

No Redis, no sleeping: every manager gets a fixed clock (``FIXED_NOW``), and each ``last_activity`` is built as
``FIXED_NOW - age`` in one of the representations a stored session may carry.
"""

from __future__ import annotations

import os
import time as time_module
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fmredis.serialization import parse_utc
from fmredis.ttl_policy import SessionTTLManager

FIXED_NOW = datetime(2025, 1, 15, 12, 0, 0, tzinfo=timezone.utc)

IST = timezone(timedelta(hours=5, minutes=30))
EST = timezone(timedelta(hours=-5))

ACTIVE, DEFAULT, OLDER = 3600, 1800, 900  # the default config's three answers

INT_FIELDS = ("default_ttl", "active_ttl", "max_ttl", "min_ttl", "active_window", "idle_window")

no_db = settings(database=None, deadline=None, max_examples=300)


def fixed_clock() -> datetime:
    return FIXED_NOW


def manager(**kwargs: Any) -> SessionTTLManager:
    return SessionTTLManager(clock=fixed_clock, **kwargs)


# Every way a stored last_activity may look, each a function of the instant (an aware UTC datetime).
REPRESENTATIONS: dict[str, Callable[[datetime], object]] = {
    "aware_utc": lambda moment: moment,
    "aware_plus_0530": lambda moment: moment.astimezone(IST),
    "aware_minus_0500": lambda moment: moment.astimezone(EST),
    "naive_datetime": lambda moment: moment.replace(tzinfo=None),
    "iso_plus_0000": lambda moment: moment.isoformat(),
    "iso_z": lambda moment: moment.replace(tzinfo=None).isoformat() + "Z",
    "iso_lower_z": lambda moment: moment.replace(tzinfo=None).isoformat() + "z",
    "iso_naive": lambda moment: moment.replace(tzinfo=None).isoformat(),
    "iso_plus_0530": lambda moment: moment.astimezone(IST).isoformat(),
    "iso_minus_0500": lambda moment: moment.astimezone(EST).isoformat(),
}
REPR_NAMES = sorted(REPRESENTATIONS)


def session_aged(age: timedelta, representation: str) -> dict[str, object]:
    return {"user": "u1", "last_activity": REPRESENTATIONS[representation](FIXED_NOW - age)}


def test_representations_round_trip_to_the_same_instant() -> None:
    """Guard for the helpers above: every representation parses back to exactly the instant it was built from."""
    moment = datetime(2025, 1, 15, 11, 55, 0, 1000, tzinfo=timezone.utc)
    for name in REPR_NAMES:
        assert parse_utc(REPRESENTATIONS[name](moment)) == moment, name


# --- thresholds -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0, ACTIVE),
        (0.0, ACTIVE),
        (1, ACTIVE),
        (299, ACTIVE),
        (299.999, ACTIVE),
        (299.999999, ACTIVE),
        (300, DEFAULT),
        (300.0, DEFAULT),
        (300.000001, DEFAULT),
        (1000, DEFAULT),
        (1799, DEFAULT),
        (1799.999999, DEFAULT),
        (1800, OLDER),
        (1800.0, OLDER),
        (1801, OLDER),
        (86_400, OLDER),
        (86_410, OLDER),
        (10 * 86_400, OLDER),
        (-1, ACTIVE),
        (-86_400, ACTIVE),
    ],
)
def test_ttl_for_age_default_thresholds(age: float, expected: int) -> None:
    assert manager().ttl_for_age(age) == expected


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0, 3600), (299.999, 3600), (300, 4000), (1799, 4000), (1800, 2000), (86_410, 2000)],
)
def test_older_ttl_is_half_the_default_when_that_exceeds_min_ttl(age: float, expected: int) -> None:
    custom = manager(default_ttl=4000, min_ttl=900, max_ttl=7200)
    assert custom.ttl_for_age(age) == expected


@pytest.mark.parametrize(
    ("kwargs", "older"),
    [
        ({}, 900),  # 1800 // 2 == 900 == min_ttl
        ({"min_ttl": 1000}, 1000),  # min_ttl wins over 1800 // 2
        ({"min_ttl": 100}, 900),  # 1800 // 2 wins over min_ttl
        ({"default_ttl": 1801, "min_ttl": 100}, 900),  # floor division
        ({"default_ttl": 4000, "min_ttl": 900}, 2000),
        ({"default_ttl": 4000, "min_ttl": 2500}, 2500),
    ],
)
def test_older_ttl_is_max_of_half_default_and_min(kwargs: dict[str, int], older: int) -> None:
    assert manager(**kwargs).ttl_for_age(1800) == older
    assert manager(**kwargs).calculate_ttl(session_aged(timedelta(hours=3), "iso_z")) == older


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (timedelta(0), ACTIVE),
        (timedelta(seconds=299, milliseconds=999), ACTIVE),
        (timedelta(seconds=299, microseconds=999_999), ACTIVE),
        (timedelta(seconds=300), DEFAULT),
        (timedelta(seconds=1799), DEFAULT),
        (timedelta(seconds=1799, microseconds=999_999), DEFAULT),
        (timedelta(seconds=1800), OLDER),
    ],
)
@pytest.mark.parametrize("representation", REPR_NAMES)
def test_calculate_ttl_boundaries_in_every_representation(age: timedelta, expected: int, representation: str) -> None:
    assert manager().calculate_ttl(session_aged(age, representation)) == expected


@pytest.mark.parametrize(
    ("age_seconds", "expected"),
    [(0, 3600), (59, 3600), (60, 1800), (599, 1800), (600, 900), (1799, 900)],
)
def test_custom_windows_move_the_thresholds(age_seconds: int, expected: int) -> None:
    custom = manager(active_window=60, idle_window=600)
    assert custom.ttl_for_age(age_seconds) == expected
    assert custom.calculate_ttl(session_aged(timedelta(seconds=age_seconds), "iso_plus_0000")) == expected


@pytest.mark.parametrize(("age_seconds", "expected"), [(0, 3600), (599, 3600), (600, 900), (10_000, 900)])
def test_equal_windows_leave_no_default_band(age_seconds: int, expected: int) -> None:
    custom = manager(active_window=600, idle_window=600)
    assert custom.ttl_for_age(age_seconds) == expected


# --- the full age, days included ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "age",
    [
        timedelta(days=1, seconds=10),  # .seconds == 10 -> would say "active"
        timedelta(days=1, seconds=1000),  # .seconds == 1000 -> would say "default"
        timedelta(days=3),  # .seconds == 0 -> would say "active"
        timedelta(days=9, hours=23, minutes=59),
    ],
)
@pytest.mark.parametrize("representation", REPR_NAMES)
def test_days_count_in_the_age(age: timedelta, representation: str) -> None:
    assert manager().calculate_ttl(session_aged(age, representation)) == OLDER


def test_one_day_and_ten_seconds_is_older_not_active() -> None:
    """The seed design's bug: ``timedelta.seconds`` drops the days, so this session looked 10 s old."""
    age = timedelta(days=1, seconds=10)
    ttl_manager = manager()
    # What the buggy ``.seconds`` computation would have answered, so the assertion below tells the two apart.
    assert age.seconds == 10
    assert ttl_manager.ttl_for_age(age.seconds) == ACTIVE
    assert ttl_manager.calculate_ttl({"last_activity": FIXED_NOW - age}) == OLDER
    assert ttl_manager.calculate_ttl({"last_activity": "2025-01-14T11:59:50Z"}) == OLDER
    assert ttl_manager.calculate_ttl({"last_activity": "2025-01-14T11:59:50.000+00:00"}) == OLDER


# --- timestamp forms ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_activity", "expected"),
    [
        # 11:55:00Z is exactly 300 s before FIXED_NOW -> default; 11:59:00Z (60 s) -> active.
        ("2025-01-15T17:25:00+05:30", DEFAULT),  # read as 17:25Z it would be in the future -> active
        (datetime(2025, 1, 15, 17, 25, tzinfo=IST), DEFAULT),
        ("2025-01-15T06:59:00-05:00", ACTIVE),  # read as 06:59Z it would be 5 h old -> older
        (datetime(2025, 1, 15, 6, 59, tzinfo=EST), ACTIVE),
        ("2025-01-15T11:59:00+00:00", ACTIVE),
        ("2025-01-15T11:59:00", ACTIVE),
        ("2025-01-15 11:59:00", ACTIVE),
        ("2025-01-15T11:54:59.999Z", DEFAULT),
        ("2025-01-15T11:55:00.001Z", ACTIVE),
        ("2025-01-15T11:30:00.000Z", OLDER),
        ("2025-01-15T11:30:00.001Z", DEFAULT),
        ("2025-01-15T10:30:45.123Z", OLDER),
        (datetime(2025, 1, 15, 11, 59), ACTIVE),  # naive = UTC
        (datetime(2025, 1, 15, 6, 59), OLDER),  # naive = UTC, not local time
        ("2025-01-15", OLDER),  # date-only: midnight UTC, 12 h ago
    ],
)
def test_timestamp_forms(last_activity: object, expected: int) -> None:
    assert manager().calculate_ttl({"last_activity": last_activity}) == expected


@no_db
@given(
    age=st.floats(min_value=0, max_value=10 * 86_400, allow_nan=False, allow_infinity=False).map(lambda a: round(a, 6)),
    representation=st.sampled_from(REPR_NAMES),
    kwargs=st.sampled_from(
        [
            {},
            {"default_ttl": 4000, "min_ttl": 900, "max_ttl": 7200},
            {"active_ttl": 7200, "max_ttl": 7200},
            {"default_ttl": 60, "active_ttl": 120, "min_ttl": 45, "max_ttl": 120, "active_window": 30},
        ]
    ),
)
@example(age=299.999999, representation="iso_z", kwargs={})
@example(age=300.0, representation="iso_z", kwargs={})
@example(age=1799.999999, representation="iso_plus_0530", kwargs={})
@example(age=1800.0, representation="aware_minus_0500", kwargs={})
@example(age=86_410.0, representation="iso_naive", kwargs={})
def test_calculate_ttl_matches_ttl_for_age(age: float, representation: str, kwargs: dict[str, int]) -> None:
    ttl_manager = manager(**kwargs)
    delta = timedelta(seconds=age)
    assert delta.total_seconds() == age  # the rounding to microseconds above makes the age exactly representable
    ttl = ttl_manager.calculate_ttl(session_aged(delta, representation))
    assert ttl == ttl_manager.ttl_for_age(age)
    older = max(ttl_manager.default_ttl // 2, ttl_manager.min_ttl)
    assert min(ttl_manager.active_ttl, ttl_manager.default_ttl, older) <= ttl <= ttl_manager.max_ttl
    if age < ttl_manager.active_window:
        assert ttl == ttl_manager.active_ttl
    elif age < ttl_manager.idle_window:
        assert ttl == ttl_manager.default_ttl
    else:
        assert ttl == older


# --- missing or unusable last_activity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "session",
    [
        {},
        {"user": "u1"},
        {"lastActivity": "2025-01-15T11:59:00Z"},
        {"last_activity": None},
        {"last_activity": ""},
        {"last_activity": "yesterday"},
        {"last_activity": "Z"},
        {"last_activity": "2025-13-01T00:00:00Z"},
        {"last_activity": "2025-01-15T25:00:00"},
        {"last_activity": "2025-01-15T11:59:00+00:00Z"},
        {"last_activity": " "},
        {"last_activity": 42},
        {"last_activity": 1736942340.0},
        {"last_activity": True},
        {"last_activity": []},
        {"last_activity": ["2025-01-15T11:59:00Z"]},
        {"last_activity": {"at": "2025-01-15T11:59:00Z"}},
        {"last_activity": b"2025-01-15T11:59:00Z"},
        {"last_activity": date(2025, 1, 15)},
        {"last_activity": time(11, 59)},
    ],
)
def test_missing_or_unusable_last_activity_gives_default_ttl(session: dict[str, object]) -> None:
    assert manager().calculate_ttl(session) == DEFAULT
    custom = manager(default_ttl=1234, min_ttl=100)
    assert custom.calculate_ttl(session) == 1234


# --- future timestamps (clock skew) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ahead",
    [timedelta(microseconds=1), timedelta(seconds=1), timedelta(minutes=10), timedelta(hours=1), timedelta(days=30)],
)
@pytest.mark.parametrize("representation", REPR_NAMES)
def test_future_timestamp_counts_as_active(ahead: timedelta, representation: str) -> None:
    assert manager().calculate_ttl(session_aged(-ahead, representation)) == ACTIVE
    assert manager(default_ttl=4000, min_ttl=900).calculate_ttl(session_aged(-ahead, representation)) == ACTIVE


# --- configuration validation ---------------------------------------------------------------------------------------


def test_defaults() -> None:
    ttl_manager = SessionTTLManager()
    assert (
        ttl_manager.default_ttl,
        ttl_manager.active_ttl,
        ttl_manager.max_ttl,
        ttl_manager.min_ttl,
        ttl_manager.active_window,
        ttl_manager.idle_window,
    ) == (1800, 3600, 7200, 900, 300, 1800)


def test_default_clock_is_aware_utc_now() -> None:
    before = datetime.now(timezone.utc)
    now = SessionTTLManager().clock()
    after = datetime.now(timezone.utc)
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= after


def test_active_ttl_equal_to_max_ttl_is_allowed() -> None:
    ttl_manager = manager(active_ttl=7200, max_ttl=7200)
    assert ttl_manager.calculate_ttl(session_aged(timedelta(seconds=5), "iso_z")) == 7200
    assert ttl_manager.ttl_for_age(0) == 7200


def test_everything_equal_to_max_ttl_is_allowed() -> None:
    ttl_manager = manager(default_ttl=600, active_ttl=600, min_ttl=600, max_ttl=600)
    assert [ttl_manager.ttl_for_age(age) for age in (0, 300, 1800)] == [600, 600, 600]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"active_ttl": 7201}, "active_ttl"),
        ({"max_ttl": 3599}, "active_ttl"),
        ({"default_ttl": 7201}, "default_ttl"),
        ({"min_ttl": 7201}, "min_ttl"),
        ({"max_ttl": 1000}, "default_ttl"),  # default_ttl is checked first
        ({"default_ttl": 900, "max_ttl": 1000}, "active_ttl"),
        ({"default_ttl": 900, "active_ttl": 900, "min_ttl": 1001, "max_ttl": 1000}, "min_ttl"),
    ],
)
def test_ttl_above_max_ttl_is_refused(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} \(\d+\) exceeds max_ttl \({kwargs.get('max_ttl', 7200)}\)$"):
        manager(**kwargs)


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("bad", [0, -1, -3600, 1.0, 1800.0, "1800", None, True, False, [1800]])
def test_non_positive_or_non_int_field_is_refused(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be an int number of seconds of at least 1 \(got "):
        manager(**{field: bad})


def test_active_window_above_idle_window_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^active_window \(1801\) exceeds idle_window \(1800\)$"):
        manager(active_window=1801)
    with pytest.raises(ValueError, match=r"^active_window \(301\) exceeds idle_window \(300\)$"):
        manager(idle_window=300, active_window=301)


@pytest.mark.parametrize("clock", [None, "now", 42, FIXED_NOW])
def test_non_callable_clock_is_refused(clock: object) -> None:
    with pytest.raises(TypeError, match=r"^clock must be callable, not "):
        SessionTTLManager(clock=clock)  # type: ignore[arg-type]


# --- immutability ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [*((name, 60) for name in INT_FIELDS), ("clock", fixed_clock)])
def test_frozen(field: str, value: object) -> None:
    ttl_manager = manager()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(ttl_manager, field, value)
    assert attrs.asdict(ttl_manager) == attrs.asdict(manager())


def test_frozen_direct_assignment() -> None:
    ttl_manager = manager()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ttl_manager.max_ttl = 1  # type: ignore[misc]
    assert ttl_manager.max_ttl == 7200


# --- naive means UTC, whatever the machine's local zone ------------------------------------------------------------


@pytest.fixture
def local_zone_utc_minus_5() -> Iterator[None]:
    """The process's local time zone set to UTC-5 (a POSIX TZ string, no tz database needed), restored after."""
    if not hasattr(time_module, "tzset"):
        pytest.skip("time.tzset is POSIX-only")
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "XST+05"
    time_module.tzset()
    try:
        assert datetime(2025, 1, 15, 12).astimezone().utcoffset() == timedelta(hours=-5)  # the zone took effect
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time_module.tzset()


@pytest.mark.usefixtures("local_zone_utc_minus_5")
@pytest.mark.parametrize("value", [datetime(2025, 1, 15, 10, 30, 45), "2025-01-15T10:30:45", "2025-01-15 10:30:45"])
def test_naive_is_utc_not_local_time(value: object) -> None:
    assert parse_utc(value) == datetime(2025, 1, 15, 10, 30, 45, tzinfo=timezone.utc)
    # 11:54:59 UTC is 301 s old (default); read as local UTC-5 time it would be in the future (active).
    # 06:59 UTC is 5 h old (older); read as local UTC-5 time it would be 11:59 UTC, 60 s old (active).
    assert manager().calculate_ttl({"last_activity": datetime(2025, 1, 15, 11, 54, 59)}) == DEFAULT
    assert manager().calculate_ttl({"last_activity": "2025-01-15T06:59:00"}) == OLDER


# --- parse_utc ------------------------------------------------------------------------------------------------------

UTC_1030 = datetime(2025, 1, 15, 10, 30, 45, tzinfo=timezone.utc)
UTC_1030_MS = datetime(2025, 1, 15, 10, 30, 45, 123_000, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-15T10:30:45.123Z", UTC_1030_MS),
        ("2025-01-15T10:30:45.123z", UTC_1030_MS),
        ("2025-01-15T10:30:45Z", UTC_1030),
        ("2025-01-15T10:30:45+00:00", UTC_1030),
        ("2025-01-15T10:30:45.123000+00:00", UTC_1030_MS),
        ("2025-01-15T10:30:45", UTC_1030),
        ("2025-01-15 10:30:45", UTC_1030),
        ("2025-01-15T10:30:45.123", UTC_1030_MS),
        ("2025-01-15T16:00:45+05:30", UTC_1030),
        ("2025-01-15T05:30:45-05:00", UTC_1030),
        ("2025-01-16T01:30:45+15:00", UTC_1030),
        ("2025-01-15", datetime(2025, 1, 15, tzinfo=timezone.utc)),
        ("2025-01-15T00:30:45-10:00", datetime(2025, 1, 15, 10, 30, 45, tzinfo=timezone.utc)),
        ("2025-01-14T23:30:45-11:00", UTC_1030),
        (UTC_1030, UTC_1030),
        (datetime(2025, 1, 15, 10, 30, 45), UTC_1030),
        (datetime(2025, 1, 15, 16, 0, 45, tzinfo=IST), UTC_1030),
        (datetime(2025, 1, 15, 5, 30, 45, tzinfo=EST), UTC_1030),
    ],
)
def test_parse_utc_accepted_forms(value: object, expected: datetime) -> None:
    parsed = parse_utc(value)
    assert parsed is not None
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)
    # Same wall-clock fields as the UTC instant, not merely the same instant in another zone.
    assert parsed.replace(tzinfo=None) == expected.replace(tzinfo=None)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        " ",
        "yesterday",
        "now",
        "Z",
        "z",
        "2025-13-01T00:00:00Z",
        "2025-01-32",
        "2025-01-15T25:00:00",
        "2025-01-15T10:30:45+00:00Z",
        "not a dateZ",
        42,
        0,
        42.5,
        True,
        [],
        ["2025-01-15T10:30:45Z"],
        {"a": 1},
        b"2025-01-15T10:30:45Z",
        date(2025, 1, 15),
        time(10, 30, 45),
        object(),
    ],
)
def test_parse_utc_garbage_is_none(value: object) -> None:
    assert parse_utc(value) is None


@no_db
@given(
    moment=st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    offset_minutes=st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
)
def test_parse_utc_property(moment: datetime, offset_minutes: int) -> None:
    expected = moment.replace(tzinfo=timezone.utc)
    zone = timezone(timedelta(minutes=offset_minutes))
    for value in (
        moment,
        moment.isoformat(),
        moment.isoformat() + "Z",
        expected,
        expected.isoformat(),
        expected.astimezone(zone),
        expected.astimezone(zone).isoformat(),
    ):
        parsed = parse_utc(value)
        assert parsed == expected, value
        assert parsed is not None
        assert parsed.utcoffset() == timedelta(0), value
        assert parsed.replace(tzinfo=None) == moment, value


# --- timestamps that are valid ISO-8601 but fall outside datetime's range once converted to UTC ---------------------


@pytest.mark.parametrize(
    "last_activity",
    [
        "9999-12-31T23:59:59-05:00",
        "0001-01-01T00:00:00+05:30",
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=EST),
        datetime(1, 1, 1, tzinfo=IST),
    ],
)
def test_out_of_range_after_utc_conversion_gives_default_ttl(last_activity: object) -> None:
    assert parse_utc(last_activity) is None
    assert manager().calculate_ttl({"last_activity": last_activity}) == DEFAULT
