"""The sending path's decisions as values (`domain.delivery`), held to their promises without a
database: nothing goes to a suppressed, pending, ended or stopped lead; every refusal says why;
an email SMTP may have taken is never tried again; back-off grows and ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from autofunnel.domain.delivery import MAX_ATTEMPTS, RECIPIENT_STATUS, Fail, Retry, after_failure, refusal
from autofunnel.domain.engine import suppression_reason
from autofunnel.domain.statuses import SUPPRESSED, EndCause, EnrollmentStatus, LeadStatus

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

kinds = st.sampled_from(sorted(RECIPIENT_STATUS))
leads = st.sampled_from(list(LeadStatus))
enrollments = st.one_of(st.none(), st.sampled_from(list(EnrollmentStatus)))
causes = st.one_of(st.none(), st.sampled_from(list(EndCause)))
reasons = st.one_of(st.none(), st.sampled_from([suppression_reason(s) for s in sorted(SUPPRESSED)] + ["entered stage 'tripwire'", "purchase", "exit step"]))


@given(kinds, leads, enrollments, causes, reasons)
def test_a_refusal_always_says_why_and_an_allowed_email_breaks_no_rule(
    kind: str, lead: str, enrollment: str | None, cause: str | None, reason: str | None,
) -> None:
    said = refusal(kind, lead, enrollment, cause, reason)
    if said is not None:
        assert isinstance(said, str) and said.strip()
        return
    assert RECIPIENT_STATUS[kind] in (None, lead)
    assert enrollment not in ("ended", "stopped")
    assert not (enrollment is not None and cause == EndCause.SUPPRESSED)


@given(leads, enrollments, causes, reasons)
def test_marketing_mail_goes_to_active_leads_only_and_the_confirmation_to_pending_ones(
    lead: str, enrollment: str | None, cause: str | None, reason: str | None,
) -> None:
    if lead != "active":
        assert refusal("email", lead, enrollment, cause, reason) is not None
    if lead != "pending":
        assert refusal("confirm", lead, enrollment, cause, reason) is not None
    if lead in SUPPRESSED:
        assert refusal("email", lead, enrollment, cause, reason) == f"suppressed: lead {lead}"


def test_an_ended_stage_or_stopped_sequence_sends_nothing_more() -> None:
    assert refusal("email", "active", "ended", EndCause.MOVED_ON, "entered stage 'tripwire'") == "stage ended: entered stage 'tripwire'"
    assert refusal("notify", "unsubscribed", "stopped", EndCause.STOPPED, "purchase") == "sequence stopped: purchase"
    assert refusal("email", "active", "exited", EndCause.SUPPRESSED, suppression_reason("bounced")) == "suppressed: lead bounced"
    assert refusal("email", "active", "exited", EndCause.EXIT_STEP, "exit step") is None  # its own `exit`: queued emails before it still go
    assert refusal("email", "active", "exited", None, suppression_reason("bounced")) is None  # the cause decides, not the words
    assert refusal("email", "active", None, None, None) is None


@given(st.booleans(), st.booleans(), st.booleans(), kinds, st.integers(min_value=1, max_value=MAX_ATTEMPTS + 2))
def test_a_failed_handoff_is_retried_only_while_it_is_safe_and_useful(maybe_sent: bool, permanent: bool, hard_bounce: bool, kind: str, attempts: int) -> None:
    decided = after_failure(answer="451 later", maybe_sent=maybe_sent, permanent=permanent, hard_bounce=hard_bounce, kind=kind, attempts=attempts, now=NOW)
    if maybe_sent:
        assert isinstance(decided, Fail) and decided.reason.startswith("interrupted") and not decided.suppress
    elif permanent or attempts >= MAX_ATTEMPTS:
        assert isinstance(decided, Fail) and decided.suppress == (hard_bounce and kind == "email")
    else:
        assert isinstance(decided, Retry) and decided.at > NOW


def test_back_off_grows_with_each_attempt() -> None:
    waits = []
    for attempts in range(1, MAX_ATTEMPTS):
        decided = after_failure(answer="451", maybe_sent=False, permanent=False, hard_bounce=False, kind="email", attempts=attempts, now=NOW)
        assert isinstance(decided, Retry)
        waits.append(decided.at - NOW)
    assert waits == sorted(waits) and waits[0] == timedelta(minutes=1)
