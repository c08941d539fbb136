"""What personal data leaves the gateway towards a terminal.

The rule for ID numbers: a terminal sees the first six characters, the region of issue, and nothing
else, the length kept (`500103************`). The region is no secret towards this terminal (the same
reply names the insured district); the birth date, the sequence number and the check digit are never
returned. The earlier mask hid only the birth date, so a caller who had the rest needed at most a few
thousand guesses by ID number (2,624 found one); now a guess must cover birth date and sequence number
together, millions of candidates, against the per-institution limit on unknown persons
(`person_misses_per_min_max`). The cashier confirms the patient with the card swiped and the masked
name, not with digits of the ID number."""

from __future__ import annotations

ID_VISIBLE_PREFIX = 6  # the administrative region of issue
ID_LENGTH_MIN = 15  # the old 15-digit numbers share the region prefix


def mask_id_number(value: str) -> str:
    if len(value) < ID_LENGTH_MIN:
        return "*" * len(value)
    return value[:ID_VISIBLE_PREFIX] + "*" * (len(value) - ID_VISIBLE_PREFIX)
