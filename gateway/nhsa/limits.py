"""The national front end's limits: everything a national request can make grow, with its unit."""

from __future__ import annotations

from dataclasses import dataclass

from rules_cache.records import LINES_MAX


@dataclass(frozen=True, slots=True)
class NationalLimits:
    """Everything a national request can make grow, with its unit."""

    body_bytes_max: int = 256 * 1024  # an envelope's HTTP body (input is at most 40,000 characters)
    fee_details_per_upload_max: int = LINES_MAX  # feedetail[] rows in one 2204/2301
    fee_details_per_visit_max: int = 2000  # details held for one visit or stay, uploaded and not cancelled
    visit_retention_days: int = 30  # a visit's record (and details) after its last write
    answer_pending_ms: int = 30_000  # a message id is held this long while its first answer is computed
    sign_in_retention_hours: int = 24  # a 9001 sign_no stays valid this long unless signed out (9002)
    request_timeout_ms: int = 5_000  # a transaction's whole run (-1, outcome unknown, beyond it)
    reconcile_rows_max: int = 5000  # 3202 detail rows per request (the servicer's own limit too)
    body_read_timeout_ms: int = 10_000  # the whole body after the headers (a slow sender holds no more)
