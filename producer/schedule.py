"""When a job may run: its start time, its deadline and its priority, as one value.

Times are what a person types before going home: `22:00` (local time, today, or
tomorrow if that has passed) or an ISO 8601 datetime (local time unless it names a
zone). A deadline written as a clock time is the next such time after the start, so
`--start-at 22:00 --deadline 07:00` is one night. Everything is stored in UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.errors import ConfigError
from worker.broker import MAX_PRIORITY

CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Schedule:
    start_at: datetime | None = None
    deadline: datetime | None = None
    priority: int = 0

    def waits(self, now: datetime) -> bool:
        """Whether the job is held back (state `scheduled`) instead of enqueued now."""
        return self.start_at is not None and self.start_at > now


def parse(start_at: str | None, deadline: str | None, *, priority: int = 0,
          now: datetime | None = None) -> Schedule:
    """The schedule the CLI's options describe; a ConfigError names the bad option."""
    now = now or datetime.now(UTC)
    if not 0 <= priority <= MAX_PRIORITY:
        raise ConfigError(f"--priority {priority}: must be between 0 and {MAX_PRIORITY}")
    start = when(start_at, now, "--start-at") if start_at else None
    end = when(deadline, start or now, "--deadline") if deadline else None
    if end is not None and end <= (start or now):
        after = f"the start ({start.isoformat()})" if start else "now"
        raise ConfigError(f"--deadline {deadline}: must be after {after}")
    return Schedule(start, end, priority)


def when(text: str, after: datetime, option: str) -> datetime:
    """`HH:MM` as the next such local time after `after`, or an ISO 8601 datetime; UTC."""
    clock = CLOCK.match(text.strip())
    if clock:
        local = after.astimezone()
        at = local.replace(hour=int(clock[1]), minute=int(clock[2]), second=0, microsecond=0)
        if at <= local:
            at += timedelta(days=1)
        return at.astimezone(UTC)
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: not HH:MM nor an ISO 8601 datetime "
                          "(e.g. 22:00 or 2026-11-27T22:00)") from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # a naive time is the user's local time
    return parsed.astimezone(UTC)
