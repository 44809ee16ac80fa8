"""When a task is next due on the edge, as a pure function of its trigger and run history.

The edge scheduler asks this after every change and every run; the time is
given, never read, so tests step through days of cron schedules instantly.
Event triggers (`mqtt`) are never due by time: the event bus starts their runs.
"""

from __future__ import annotations

from shared.resources.task import CronTrigger, IntervalTrigger, MqttTrigger, OnceTrigger, Trigger


def next_due_ms(trigger: Trigger, *, runs: int, last_start_ms: int, since_ms: int) -> int | None:
    """Epoch ms at which the next run is due (possibly in the past: due now), or None.

    `runs` and `last_start_ms` count this generation of the task only;
    `since_ms` is when this edge first held the generation (cron counts from it).
    """
    if isinstance(trigger, OnceTrigger):
        return since_ms if runs == 0 else None
    if isinstance(trigger, IntervalTrigger):
        return since_ms if runs == 0 else last_start_ms + int(trigger.every * 1000)
    if isinstance(trigger, CronTrigger):
        return trigger.next_after(last_start_ms if runs else since_ms)
    if isinstance(trigger, MqttTrigger):
        return None
    raise TypeError(f"unknown trigger {trigger!r}")
