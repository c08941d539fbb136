"""The dates a bill carries (national begndate, enddate, fee_ocur_time), read and checked at the edge.

Rules apply by the date of care, not the date of the message: each line by its service date, the policy
version and the plan-year by the visit date or, for a stay, by the discharge date (or the admission
date where the policy says so). Dates are days in Asia/Shanghai (the gateway's zone); a terminal may
send a date or a date and time. Missing dates are the gateway's date today, so a terminal that sends
none settles as before; a line without a service date is served on the visit date, for a stay on its
discharge date.

The window: no date of care more than DATE_PAST_DAYS_MAX days before today (what the gateway keeps a
plan-year for) or more than DATE_FUTURE_DAYS_MAX after (a terminal's clock a little ahead near
midnight); a stay at most STAY_DAYS_MAX days long (a longer one is settled in interim parts)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

from gateway.engine.model import Bill

DATE_PAST_DAYS_MAX = 730
DATE_FUTURE_DAYS_MAX = 1
STAY_DAYS_MAX = 730


def parse_day(value: str) -> date | None:
    """YYYY-MM-DD, or YYYY-MM-DD HH:MM:SS (the national platform's inf_time and fee_ocur_time)."""
    text = value.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text).date()
    except ValueError:
        return None


class Dates:
    """Checks one bill's dates, collecting every violation (named by its proto path)."""

    def __init__(self, today: date) -> None:
        self.today = today
        self.earliest = today - timedelta(days=DATE_PAST_DAYS_MAX)
        self.latest = today + timedelta(days=DATE_FUTURE_DAYS_MAX)
        self.violations: list[tuple[str, str]] = []

    def day(self, value: str, field: str) -> date | None:
        if not value:
            return None
        found = parse_day(value)
        if found is None:
            self.violations.append((field, f"a date YYYY-MM-DD (or YYYY-MM-DD HH:MM:SS), not {value!r}"))
        elif not self.earliest <= found <= self.latest:
            self.violations.append(
                (
                    field,
                    f"{found} is outside {self.earliest} to {self.latest} (today {self.today})",
                )
            )
            return None
        return found

    def check(self, bill: Any, stay: bool) -> tuple[date | None, date | None, date | None, list[date | None]]:
        visit = self.day(bill.visit_date, "bill.visit_date")
        admitted = self.day(bill.admission_date, "bill.admission_date")
        discharged = self.day(bill.discharge_date, "bill.discharge_date")
        if stay and bill.visit_date:
            self.violations.append(("bill.visit_date", "a stay has an admission_date and a discharge_date"))
        if not stay and (bill.admission_date or bill.discharge_date):
            field = "bill.admission_date" if bill.admission_date else "bill.discharge_date"
            self.violations.append((field, "only an inpatient or maternity bill has admission and discharge"))
        if stay:
            first, last = admitted or self.today, discharged or self.today
            if first > last:
                self.violations.append(
                    ("bill.discharge_date", f"{last} is before the admission date {first}")
                )
            elif (last - first).days > STAY_DAYS_MAX:
                self.violations.append(
                    ("bill.discharge_date", f"a stay of {(last - first).days} days: at most {STAY_DAYS_MAX}"
                     " in one bill; settle a long stay in interim parts")
                )  # fmt: skip
        served = []
        for i, line in enumerate(bill.lines):
            field = f"bill.lines[{i}].service_date"
            on = self.day(line.service_date, field)
            if on is not None and stay and not (admitted or self.today) <= on <= (discharged or self.today):
                self.violations.append((field, f"{on} is outside the stay ({admitted or self.today} to"
                                               f" {discharged or self.today})"))  # fmt: skip
            elif on is not None and not stay and on > (visit or self.today):
                self.violations.append((field, f"{on} is after the visit date {visit or self.today}"))
            served.append(on)
        return visit, admitted, discharged, served


def with_dates(
    bill: Bill,
    today: date,
    dates: tuple[date | None, date | None, date | None, list[date | None]],
    stay: bool,
) -> Bill:
    """The bill with every date filled in: what the engine prices it by and what the settlement records."""
    visit, admitted, discharged, served = dates
    if stay:
        admitted, discharged, visit = admitted or today, discharged or today, None
        default = discharged
    else:
        visit = visit or today
        default = visit
    lines = tuple(
        replace(line, service_on=on or default) for line, on in zip(bill.lines, served, strict=True)
    )
    return replace(bill, lines=lines, visit_on=visit, admitted_on=admitted, discharged_on=discharged)
