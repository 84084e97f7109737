"""Every status a lead, an enrollment and an email can have, defined once.

The store's CHECK constraints, the engine, the sending rules and the services all
name them from here. They are `StrEnum`s, so a status read back from the database
(a plain string) compares equal to its member, and the columns stay plain text:
no migration, and the SQL a member binds is the word itself.

A delivery's status moves only along `DELIVERY_MOVES`; the store builds every
status UPDATE of a delivery through `store.delivery_moves.move`, which asks
`require_move` first and puts the from-status in the statement's WHERE, so a
move the table does not list can neither be written nor happen by a race.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from autofunnel.errors import IllegalStatusMove


class LeadStatus(StrEnum):
    PENDING = "pending"
    """Subscribed to a double opt-in funnel, not confirmed yet: only the confirmation may go."""
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    ERASED = "erased"


SUPPRESSED: Final = frozenset({LeadStatus.UNSUBSCRIBED, LeadStatus.BOUNCED, LeadStatus.COMPLAINED, LeadStatus.ERASED})
"""Lead statuses no funnel email may ever go to again."""


class EnrollmentStatus(StrEnum):
    ACTIVE = "active"
    """Waiting on a step, or due."""
    DONE = "done"
    """Ran out of steps."""
    ENDED = "ended"
    """A purchase moved the lead on to a later stage: the old stage's emails stop."""
    STOPPED = "stopped"
    """A triggered sequence's stop event came."""
    EXITED = "exited"
    """Left by an exit step, a goto loop, or its lead's suppression."""


class EndCause(StrEnum):
    """Why an enrollment ended, as data: what the sending rule, the lead view and reports read
    (`enrollments.end_cause`); `end_reason` keeps the words for people."""

    FINISHED = "finished"
    """Ran out of steps (or had none, or its step was removed with no later one)."""
    EXIT_STEP = "exit_step"
    LOOP = "loop"
    """A goto loop without a wait: stopped after too many steps."""
    MOVED_ON = "moved_on"
    """Its lead entered a later stage of the funnel (a purchase, usually)."""
    STOPPED = "stopped"
    """The sequence's stop event came, or a new start event restarted it."""
    SUPPRESSED = "suppressed"
    """Its lead unsubscribed, bounced, complained or was erased."""
    REMOVED = "removed"
    """Its funnel, sequence or stage is no longer in the project."""


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    """Claimed by a worker, under a lease."""
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Never handed to the mail server: cancelled while queued, or refused at its claim."""


DELIVERY_MOVES: Final[dict[DeliveryStatus, frozenset[DeliveryStatus]]] = {
    # claimed by a worker; or cancelled (stage ended, sequence stopped, lead suppressed or erased)
    DeliveryStatus.QUEUED: frozenset({DeliveryStatus.SENDING, DeliveryStatus.SKIPPED}),
    # handed over; refused or lost with its worker; refused at its claim; a 4xx answer's retry
    DeliveryStatus.SENDING: frozenset({DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED, DeliveryStatus.QUEUED}),
    DeliveryStatus.SENT: frozenset(),
    DeliveryStatus.FAILED: frozenset(),
    DeliveryStatus.SKIPPED: frozenset(),
}
"""A delivery's status → the statuses it may move to. Sent, failed and skipped are final: at
most once means an email that may have gone is never queued again."""

FINAL_DELIVERY: Final = frozenset(status for status, onward in DELIVERY_MOVES.items() if not onward)


def require_move(before: DeliveryStatus, after: DeliveryStatus) -> None:
    """Refuse a move `DELIVERY_MOVES` does not list (a bug in the caller, caught when the
    statement is built, before anything is written)."""
    if after not in DELIVERY_MOVES[before]:
        raise IllegalStatusMove(f"a delivery cannot move from {before} to {after}")
