"""Cron schedules of scheduled experiments: the five fields (minute hour day month weekday, UTC)
or a macro such as @hourly, parsed here so the spec is refused with the field at fault and the
next run is computed without a dependency."""

from __future__ import annotations

import datetime as dt

_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


class CronError(ValueError):
    """A schedule this parser does not accept."""


def _field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = low, high
        elif "-" in body:
            start, end = (int(x) for x in body.split("-", 1))
        else:
            start = end = int(body)
            if step_text:
                end = high
        if step < 1 or start < low or end > high or start > end:
            raise CronError(f"{part!r} is outside {low}..{high}")
        values.update(range(start, end + 1, step))
    return values


def parse_cron(schedule: str) -> list[set[int]]:
    """minute, hour, day of month, month, day of week (0 = Sunday; 7 accepted as Sunday)."""
    fields = _MACROS.get(schedule.strip(), schedule).split()
    if len(fields) != 5:
        raise CronError(f"schedule {schedule!r} needs 5 fields (minute hour day month weekday) or a macro")
    try:
        parsed = [_field(f, lo, hi if i != 4 else 7) for i, (f, (lo, hi)) in enumerate(zip(fields, _RANGES))]
    except ValueError as error:
        raise CronError(f"schedule {schedule!r}: {error}") from error
    if 7 in parsed[4]:
        parsed[4] = (parsed[4] - {7}) | {0}
    return parsed


def next_run(schedule: str, after: dt.datetime) -> dt.datetime:
    """The first minute strictly after `after` (UTC) that the schedule names. Day of month and
    day of week are OR-ed when both are restricted, as cron does."""
    minutes, hours, days, months, weekdays = parse_cron(schedule)
    parts = _MACROS.get(schedule.strip(), schedule).split()
    dom_star, dow_star = parts[2] == "*", parts[4] == "*"
    at = after.astimezone(dt.timezone.utc).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    limit = at + dt.timedelta(days=5 * 366)  # Feb 29 comes round within 5 years; Feb 31 never
    while at < limit:
        if at.month not in months:
            at = (at.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
            continue
        day_ok = at.day in days
        weekday_ok = (at.isoweekday() % 7) in weekdays
        if not ((day_ok and weekday_ok) if (dom_star or dow_star) else (day_ok or weekday_ok)):
            at = at.replace(hour=0, minute=0) + dt.timedelta(days=1)
            continue
        if at.hour not in hours:
            at = at.replace(minute=0) + dt.timedelta(hours=1)
            continue
        if at.minute not in minutes:
            at += dt.timedelta(minutes=1)
            continue
        return at
    raise CronError(f"schedule {schedule!r} names no time within 5 years")
