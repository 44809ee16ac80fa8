"""When runs are due (shared/triggers.py) and whether they may start (shared/admission.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.admission import Capacity, admits, never_fits
from shared.errors import ResourceError
from shared.resources import parse_task
from shared.resources.task import Resources
from shared.triggers import next_due_ms

H = 3_600_000


def trigger(**spec: object) -> object:
    doc = {"metadata": {"name": "t"}, "spec": {"command": {"argv": ["true"]}, "trigger": spec}}
    return parse_task(doc).spec.trigger


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


def test_once_is_due_when_first_held_and_never_again() -> None:
    t = trigger(type="once")
    assert next_due_ms(t, runs=0, last_start_ms=0, since_ms=5) == 5
    assert next_due_ms(t, runs=1, last_start_ms=5, since_ms=5) is None


def test_interval_counts_from_the_last_start() -> None:
    t = trigger(type="interval", every=2.5)
    assert next_due_ms(t, runs=0, last_start_ms=0, since_ms=100) == 100
    assert next_due_ms(t, runs=3, last_start_ms=10_000, since_ms=100) == 12_500


def test_cron_is_due_at_the_next_scheduled_instant_in_its_timezone() -> None:
    utc = trigger(type="cron", schedule="0 3 * * *")
    start = ms("2026-12-08T01:30:00+00:00")
    assert next_due_ms(utc, runs=0, last_start_ms=0, since_ms=start) == ms(
        "2026-12-08T03:00:00+00:00"
    )
    ran = ms("2026-12-08T03:00:00.200+00:00")
    assert next_due_ms(utc, runs=1, last_start_ms=ran, since_ms=start) == ms(
        "2026-12-09T03:00:00+00:00"
    )
    berlin = trigger(type="cron", schedule="0 3 * * *", timezone="Europe/Berlin")
    assert next_due_ms(berlin, runs=0, last_start_ms=0, since_ms=start) == ms(
        "2026-12-08T02:00:00+00:00"  # 01:30 UTC is 02:30 CET; 03:00 CET is 02:00 UTC
    )


def test_mqtt_triggers_are_never_due_by_time() -> None:
    t = trigger(type="mqtt", topic="sensors/+/temperature")
    assert next_due_ms(t, runs=0, last_start_ms=0, since_ms=0) is None


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"type": "cron", "schedule": "61 * * * *"}, "invalid cron schedule"),
        ({"type": "cron", "schedule": "* * * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"type": "mqtt", "topic": "a/#/b"}, "'#' must be the whole last level"),
        ({"type": "mqtt", "topic": "a/b+"}, "'+' must fill a whole level"),
        ({"type": "interval", "every": 0.01}, "spec.trigger.every: expected `float` >= 0.1"),
    ],
)
def test_bad_triggers_are_refused_naming_the_problem(spec: dict[str, object], says: str) -> None:
    with pytest.raises(ResourceError, match=r"spec\.trigger") as info:
        trigger(**spec)
    assert says in str(info.value)


NODE = Capacity(cpu_millicores=2000, memory_mb=1024)


def test_admission_counts_what_runs_already() -> None:
    half = Resources(cpu_millicores=1000, memory_mb=100)
    assert admits(NODE, [half], half)
    assert not admits(NODE, [half, half], half)
    assert not admits(NODE, [Resources(memory_mb=1000)], Resources(memory_mb=100))
    assert admits(NODE, [half, half], Resources())  # declares nothing: not limited here


def test_unknown_capacity_is_not_checked() -> None:
    assert admits(Capacity(0, 0), [Resources(cpu_millicores=10**6)], Resources(cpu_millicores=1))
    assert never_fits(Capacity(0, 0), Resources(memory_mb=10**6)) is None


def test_never_fits_says_why() -> None:
    assert never_fits(NODE, Resources(cpu_millicores=2000)) is None
    assert never_fits(NODE, Resources(cpu_millicores=2001)) == (
        "the task requests 2001m CPU and this node has 2000m in all"
    )
    assert "2048 MiB memory and this node has 1024 MiB" in str(
        never_fits(NODE, Resources(memory_mb=2048))
    )


def test_capacity_from_what_the_edge_reports() -> None:
    assert Capacity.from_report({"cpus": 4, "memory_bytes": 8 << 30}) == Capacity(4000, 8192)
    assert Capacity.from_report({"cpus": "4"}) == Capacity(0, 0)


def test_a_six_field_cron_is_refused() -> None:
    with pytest.raises(ResourceError, match="must have five fields"):
        trigger(type="cron", schedule="* * * * * *")
