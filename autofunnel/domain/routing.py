"""What an event does to a lead: stage entries, sequence starts and stops, status changes.

`route_event` is pure: given what the lead is in and the event, it returns
effects; the `record_events` service applies them in the same transaction that
stores the event. Events are judged by their `at`, so one that arrives late
changes things as if it had come on time where that is still possible (a cart
event older than the purchase that stopped the cart sequence starts nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from autofunnel.domain.statuses import LeadStatus
from autofunnel.domain.conditions import EventFact
from autofunnel.domain.model import Funnel, Project, Sequence as SequenceFlow

STATUS_EVENTS = {"unsubscribed": "unsubscribed", "complained": "complained"}
SOFT_BOUNCES_AS_HARD = 3
BOUNCE_STREAK_TYPES = ("bounced", "delivered", "opened", "clicked")
"""The events that make or break a run of soft bounces: a delivery the relay reported, or a
person's open or click, shows the mailbox works and starts the count again."""


@dataclass(frozen=True)
class Membership:
    """A lead's place in one funnel: when it entered, which stages it reached or skipped."""

    funnel: str
    entered_at: datetime
    current_stage: str
    reached: frozenset[str]


@dataclass(frozen=True)
class SequenceRun:
    sequence: str
    run: int
    started_at: datetime


@dataclass(frozen=True)
class EnterStage:
    funnel: str
    stage: str
    position: int
    skipped: tuple[tuple[str, int], ...]
    leaving: str
    at: datetime


@dataclass(frozen=True)
class StartSequence:
    sequence: str
    at: datetime
    restarting: SequenceRun | None = None


@dataclass(frozen=True)
class StopSequence:
    run: SequenceRun
    at: datetime
    reason: str


@dataclass(frozen=True)
class ChangeStatus:
    status: str
    reason: str


Effect = EnterStage | StartSequence | StopSequence | ChangeStatus


def is_automated(properties: Mapping[str, Any]) -> bool:
    return properties.get("bot") is True


def soft_bounces_in_a_row(history: Sequence[EventFact], event: EventFact) -> int:
    """How many soft bounces end at `event` (itself included), by their `at`: counted back
    until anything else of BOUNCE_STREAK_TYPES (machine opens and clicks do not count)."""
    earlier = sorted(
        (fact for fact in history if fact.type in BOUNCE_STREAK_TYPES and fact.at <= event.at and not is_automated(fact.properties)),
        key=lambda fact: fact.at,
    )
    count = 1
    for fact in reversed(earlier):
        if fact.type != "bounced" or fact.properties.get("kind") != "soft":
            break
        count += 1
    return count


def status_effect(status: str, event_type: str, properties: Mapping[str, Any], history: Sequence[EventFact] = (), at: datetime | None = None) -> ChangeStatus | None:
    """Unsubscribes, hard bounces and complaints suppress the lead, and so do three soft
    bounces in a row (a mailbox full for days is as dead as a missing one); a
    confirmation activates the lead."""
    if status == LeadStatus.ERASED:
        return None
    if event_type in STATUS_EVENTS and status != STATUS_EVENTS[event_type]:
        return ChangeStatus(STATUS_EVENTS[event_type], event_type)
    if event_type == "bounced" and status != LeadStatus.BOUNCED:
        if properties.get("kind", "hard") == "hard":
            return ChangeStatus(LeadStatus.BOUNCED, "hard bounce")
        if at is not None and soft_bounces_in_a_row(history, EventFact(event_type, properties, at)) >= SOFT_BOUNCES_AS_HARD:
            return ChangeStatus(LeadStatus.BOUNCED, f"{SOFT_BOUNCES_AS_HARD} soft bounces in a row")
    if event_type == "confirmed" and status == LeadStatus.PENDING:
        return ChangeStatus(LeadStatus.ACTIVE, "confirmed")
    return None


def route_event(
    project: Project,
    status: str,
    memberships: Mapping[str, Membership],
    active_runs: Mapping[str, SequenceRun],
    history: Sequence[EventFact],
    event: EventFact,
) -> list[Effect]:
    """Effects of one event on one lead; `history` holds the lead's other events (for late arrivals).

    An open or click a link scanner made (`bot: true`) is kept for the record but
    moves nothing: machines must not advance a funnel.
    """
    if is_automated(event.properties):
        return []
    effects: list[Effect] = []
    changed = status_effect(status, event.type, event.properties, history, event.at)
    if changed is not None:
        effects.append(changed)
    for funnel in project.funnels:
        membership = memberships.get(funnel.slug)
        if membership is not None:
            entry = _stage_entry(funnel, membership, event)
            if entry is not None:
                effects.append(entry)
    for sequence in project.sequences:
        effects.extend(_sequence_effects(sequence, active_runs.get(sequence.slug), history, event))
    return effects


def _stage_entry(funnel: Funnel, membership: Membership, event: EventFact) -> EnterStage | None:
    if event.at < membership.entered_at:
        return None
    names = [stage.name for stage in funnel.stages]
    current = names.index(membership.current_stage) if membership.current_stage in names else -1
    for position in range(current + 1, len(funnel.stages)):
        stage = funnel.stages[position]
        if stage.name in membership.reached or stage.enter_on is None:
            continue
        if stage.enter_on.matches(event.type, event.properties):
            skipped = tuple(
                (funnel.stages[i].name, i) for i in range(current + 1, position) if funnel.stages[i].name not in membership.reached
            )
            return EnterStage(funnel.slug, stage.name, position, skipped, membership.current_stage, event.at)
    return None


def _sequence_effects(
    sequence: SequenceFlow, run: SequenceRun | None, history: Sequence[EventFact], event: EventFact
) -> list[Effect]:
    stops = any(matcher.matches(event.type, event.properties) for matcher in sequence.stop_on)
    if stops:
        if run is not None and event.at >= run.started_at:
            return [StopSequence(run, event.at, f"stopped by {event.type}")]
        return []
    if not sequence.start_on.matches(event.type, event.properties):
        return []
    stopped_later = any(
        past.at > event.at and any(m.matches(past.type, past.properties) for m in sequence.stop_on) for past in history
    )
    if stopped_later:
        return []
    if run is None:
        return [StartSequence(sequence.slug, event.at)]
    if sequence.restart and event.at >= run.started_at:
        return [StartSequence(sequence.slug, event.at, restarting=run)]
    return []
