"""Reading-time records (`ReadingSession`), as reader studies measure them: when an expert
opened a study's review, when they decided, and how many similar cases they opened.

A session starts when an expert opens the review page and no undecided session of theirs for
the study is younger than `SESSION_GAP` (a reload continues the same reading); the first
diagnosis they set afterwards closes it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.utils import timezone

from cases.models import ExpertLabel, ReadingSession, Study

# A reading left undecided for longer than this is abandoned; opening the review again
# starts a new one.
SESSION_GAP = dt.timedelta(hours=2)
MAX_RANK = 1000


def _open_session(*, study: Study, expert: Any, now: dt.datetime) -> ReadingSession | None:
    return (
        ReadingSession.objects.select_for_update()
        .filter(
            study=study, expert=expert, decided_at__isnull=True, opened_at__gte=now - SESSION_GAP
        )
        .order_by("-opened_at", "-id")
        .first()
    )


def reading_session_open(*, study: Study, expert: Any) -> ReadingSession:
    """The expert's current reading of `study`: the undecided one still running, or a new one
    starting now."""
    now = timezone.now()
    with transaction.atomic():
        session = _open_session(study=study, expert=expert, now=now)
        if session is None:
            session = ReadingSession.objects.create(study=study, expert=expert, opened_at=now)
    return session


def reading_session_result_opened(*, study: Study, expert: Any, rank: int) -> ReadingSession:
    """Count a similar case (by its rank) the expert opened during the reading; a rank opened
    twice counts once. Starts a reading when none runs (the page was open before)."""
    if not 1 <= int(rank) <= MAX_RANK:
        raise ValueError(f"rank must be between 1 and {MAX_RANK}")
    now = timezone.now()
    with transaction.atomic():
        session = _open_session(study=study, expert=expert, now=now)
        if session is None:
            session = ReadingSession.objects.create(study=study, expert=expert, opened_at=now)
        ranks = list(session.opened_ranks or [])
        if int(rank) not in ranks:
            ranks.append(int(rank))
            session.opened_ranks = ranks
            session.results_opened = len(ranks)
            session.save(update_fields=["opened_ranks", "results_opened"])
    return session


def reading_session_decide(
    *, study: Study, expert: Any, label: ExpertLabel
) -> ReadingSession | None:
    """Close the expert's running reading of `study` with their decision `label`; None when
    the expert decided without opening the review (e.g. from the study page or the API)."""
    now = timezone.now()
    with transaction.atomic():
        session = _open_session(study=study, expert=expert, now=now)
        if session is None:
            return None
        session.decided_at = now
        session.label = label
        session.reading_seconds = max((now - session.opened_at).total_seconds(), 0.0)
        session.save(update_fields=["decided_at", "label", "reading_seconds"])
    return session
