"""Importing a list of leads from a CSV file into a funnel.

The file is streamed and imported a chunk at a time, each chunk one
transaction written with the same bulk inserts as event ingestion, so a
million rows take flat memory and a crash loses at most the chunk in flight.
Every lead the import enters goes through `entry.enter_first_stage`, the rule
`subscribe` uses for one lead (stage entry, `subscribed` event, holdout draw,
enrollment, confirmation email under double opt-in, tallies), so an imported
lead is pending and asked to confirm like any new subscriber.

Running the same file again adds only what is missing: a lead already in the
funnel is not entered again, and a lead this file created remembers the line
it came from in its consent proof, which is how a later line with the same
address is told apart (a duplicate) from the same line read again (a resume).

On PostgreSQL two chunks are written at once, on two connections: the server's
work per lead (eight tables, their indexes and foreign-key checks) is most of an
import's time and one connection keeps one core busy. Chunks still take effect
in file order (`ChunkTurns`), so the result is the one a single writer gives.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import itertools
import threading
from contextlib import closing
from collections.abc import Callable, Iterator
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from autofunnel.domain.statuses import LeadStatus, SUPPRESSED
from autofunnel.domain.model import Funnel
from autofunnel.domain.report import lead_split_values
from autofunnel.errors import InvalidInputError
from autofunnel.services.entry import Entrant, enter_first_stage
from autofunnel.services.inputs import SOURCE_KEYS, normalize_email, parse_timezone
from autofunnel.services.leads import lead_channel
from autofunnel.services.runtime import Runtime
from autofunnel.services.tallies import regroup_leads
from autofunnel.services.versions import current_version_ids
from autofunnel.store.models import Lead, StageEntry
from autofunnel.store.queries import among, bulk_update, chunks, insert_returning

KNOWN_COLUMNS = ("email", "first_name", "timezone", "owner", "tags")
CHUNK_ROWS = 5000
KEPT_REJECTS = 1000
"""Rejects kept in memory for the closing report; all of them go to the rejects file."""
POSTGRES_WRITERS = 2
"""Chunks written at once on PostgreSQL. On this project's 2-core machine (2026-12-05):
100,000 rows, one writer 5,150–5,400 rows/s, two 8,100–8,300; 60,000 rows, three or four
8,800, no better than two: the server's backends then have both cores."""


@dataclass(slots=True)
class Row:
    line: int
    cells: list[str]
    email: str
    first_name: str | None
    timezone: str | None
    owner: str | None
    tags: list[str]
    source: dict[str, str]
    fields: dict[str, str]


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    cells: list[str]


@dataclass
class ImportResult:
    rows: int = 0
    imported: int = 0
    already_in_funnel: int = 0
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    dry_run: bool = False


class CsvLayout:
    """What the header line says: the delimiter and what each column holds."""

    def __init__(self, header: list[str]) -> None:
        self.header = header
        names = [name.strip() for name in header]
        if "email" not in names:
            raise InvalidInputError(f"the header has no 'email' column (found: {', '.join(names) or 'nothing'})", field="email", code="required")
        seen: set[str] = set()
        for name in names:
            if not name:
                raise InvalidInputError("the header has an empty column name", field="header")
            if name in seen:
                raise InvalidInputError(f"the header names column {name!r} twice", field=name)
            seen.add(name)
            if name.startswith("source.") and name[7:] not in SOURCE_KEYS:
                raise InvalidInputError(f"unknown source column {name!r}; allowed: {', '.join('source.' + k for k in SOURCE_KEYS)}", field=name)
        self.names = names
        self.at = {name: names.index(name) if name in names else None for name in KNOWN_COLUMNS}
        self.sources = [(index, name[7:]) for index, name in enumerate(names) if name.startswith("source.")]
        self.fields = [(index, name) for index, name in enumerate(names) if name not in KNOWN_COLUMNS and not name.startswith("source.")]


def open_csv(handle: TextIO) -> tuple[CsvLayout, Iterator[tuple[int, list[str]]]]:
    """The layout and the data rows, each with the line it starts on (the header is line 1).

    The delimiter is whichever of `,` and `;` the header line uses more (a
    spreadsheet in a comma-decimal locale writes semicolons); quoted fields may
    span lines, which is why rows carry their own line numbers.
    """
    first = handle.readline()
    if not first.strip():
        raise InvalidInputError("the file is empty: expected a header line naming the columns (email, first_name, …)", field="header")
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(itertools.chain([first], handle), delimiter=delimiter)
    layout = CsvLayout(next(reader))

    def rows() -> Iterator[tuple[int, list[str]]]:
        start = reader.line_num + 1
        for cells in reader:
            if cells and "".join(cells).strip():
                yield start, cells
            start = reader.line_num + 1

    return layout, rows()


def parse_row(layout: CsvLayout, line: int, cells: list[str]) -> Row | Reject:
    """One data row checked as the API checks a subscription, or why it is refused."""
    if len(cells) != len(layout.names):
        return Reject(line, f"expected {len(layout.names)} columns, got {len(cells)}", cells)
    at = layout.at
    try:
        email = normalize_email(cells[at["email"]])  # type: ignore[index]
        zone = cells[at["timezone"]] if at["timezone"] is not None else ""
        timezone = parse_timezone(zone) if zone else None
        owner_text = cells[at["owner"]].strip() if at["owner"] is not None else ""
        owner = normalize_email(owner_text, "owner") if owner_text else None
    except InvalidInputError as exc:
        return Reject(line, f"{exc.field}: {exc}", cells)
    first_name = cells[at["first_name"]].strip() or None if at["first_name"] is not None else None
    if first_name is not None and len(first_name) > 200:
        return Reject(line, "first_name: at most 200 characters", cells)
    tag_text = cells[at["tags"]] if at["tags"] is not None else ""
    tags = list(dict.fromkeys(tag.strip() for tag in tag_text.split(";") if tag.strip())) if tag_text else []
    if any(len(tag) > 100 for tag in tags):
        return Reject(line, "tags: at most 100 characters each", cells)
    source: dict[str, str] = {}
    for index, key in layout.sources:
        if value := cells[index].strip():
            if len(value) > 500:
                return Reject(line, f"source.{key}: at most 500 characters", cells)
            source[key] = value
    fields = {name: value for index, name in layout.fields if (value := cells[index].strip())}
    return Row(line, cells, email, first_name, timezone, owner, tags, source, fields)


def import_leads(
    rt: Runtime,
    path: Path,
    funnel: str,
    *,
    dry_run: bool = False,
    rejects: TextIO | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
    after_chunk: Callable[[int], None] | None = None,
    writers: int | None = None,
) -> ImportResult:
    """Import the file's good rows into the funnel, chunk by chunk; report the bad ones.

    `progress` is told how many rows each chunk read; `after_chunk` is called
    with the chunk's number once it is committed (where a crash can be staged:
    a chunk after it is then rolled back, never committed). `writers`: chunks
    written at once, `POSTGRES_WRITERS` by default on PostgreSQL; always one on
    SQLite, which has one writer at a time, and in a dry run.
    A dry run reads the database but writes nothing.
    """
    flow = rt.flow(funnel)
    if not isinstance(flow, Funnel):
        raise InvalidInputError(f"{funnel!r} is a sequence; leads are imported into funnels", field="funnel", code="not_a_funnel")
    result = ImportResult(dry_run=dry_run)
    seen_in_dry_run: set[bytes] = set()
    with path.open(encoding="utf-8-sig", newline="") as handle:
        layout, rows = open_csv(handle)
        result.header = layout.header
        writer = csv.writer(rejects) if rejects is not None else None
        if writer is not None:
            writer.writerow([*layout.header, "line", "reason"])

        def reject(item: Reject) -> None:
            result.rejected += 1
            if len(result.rejects) < KEPT_REJECTS:
                result.rejects.append(item)
            if writer is not None:
                writer.writerow([*item.cells, item.line, item.reason])

        def written(turn: Turn, size: int, bad: list[Reject], outcome: _ChunkOutcome) -> None:
            """A chunk committed: count it, then let the next one commit."""
            for item in [*bad, *outcome.rejects]:
                reject(item)
            result.imported += outcome.imported
            result.already_in_funnel += outcome.already
            result.rows += size
            if progress is not None:
                progress(size)
            if after_chunk is not None:
                after_chunk(turn.number)
            turn.committed()

        def jobs() -> Iterator[_Job]:
            for number, (size, good, bad) in enumerate(parts, start=1):
                if dry_run:
                    for row in list(good.values()):
                        digest = hashlib.blake2b(row.email.encode(), digest_size=8).digest()
                        if digest in seen_in_dry_run:
                            bad.append(Reject(row.line, "email: duplicate of an earlier line", row.cells))
                            del good[row.email]
                        seen_in_dry_run.add(digest)
                turn = turns.of(number)
                yield (
                    functools.partial(_import_chunk, rt, flow, path.name, list(good.values()), dry_run, turn),
                    functools.partial(written, turn, size, bad),
                )

        count = 1 if dry_run or rt.db.backend != "postgresql" else max(1, writers or POSTGRES_WRITERS)
        turns = ChunkTurns()
        parts = _read_ahead(_parsed(layout, rows, chunk_rows))
        with closing(parts):  # the reader thread is done before the file closes, even after a crash
            _in_order(jobs(), count, turns.abandon)
    result.rejects.sort(key=lambda item: item.line)
    return result


class ChunkAbandoned(Exception):
    """The import stopped (a chunk before this one failed): this chunk writes nothing."""


class ChunkTurns:
    """Chunks written at once still take effect in file order.

    Two gates, each opened chunk by chunk in order. *Leads*: a chunk finds and
    locks its leads (creating the new ones, and the funnel's version row) only
    after the chunk before it has, so an address in both waits for the earlier
    chunk's commit and is then judged as a single writer would judge it (a
    duplicate of the earlier line). *Commit*: a chunk commits only after the one
    before it is committed and counted, so the committed chunks are always the
    file's first ones, and a crash (or `after_chunk` raising) rolls back every
    chunk after the last counted one. Past its leads gate a chunk touches no row
    another chunk can hold (its own leads, tallies that are only inserted), so
    waiting at the commit gate cannot close a circle of locks.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._passed = {"leads": 0, "commit": 0}
        self._abandoned = False

    def of(self, number: int) -> Turn:
        return Turn(self, number)

    def abandon(self) -> None:
        with self._changed:
            self._abandoned = True
            self._changed.notify_all()

    def wait(self, gate: str, number: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._abandoned or self._passed[gate] >= number - 1)
            if self._abandoned:
                raise ChunkAbandoned

    def passed(self, gate: str, number: int) -> None:
        with self._changed:
            self._passed[gate] = max(self._passed[gate], number)
            self._changed.notify_all()


@dataclass(frozen=True)
class Turn:
    """One chunk's place at the gates of `ChunkTurns`."""

    turns: ChunkTurns
    number: int

    def wait_for_leads(self) -> None:
        self.turns.wait("leads", self.number)

    def leads_found(self) -> None:
        self.turns.passed("leads", self.number)

    def wait_to_commit(self) -> None:
        self.turns.wait("commit", self.number)

    def committed(self) -> None:
        self.turns.passed("commit", self.number)


_Job = tuple[Callable[[], "_ChunkOutcome"], Callable[["_ChunkOutcome"], None]]


def _in_order(jobs: Iterator[_Job], writers: int, abandon: Callable[[], None]) -> None:
    """Run each job's work, up to `writers` at once, and hand each result on in the jobs' order.

    One writer runs in the calling thread: an in-memory SQLite store is one
    connection, which another thread would not see. On an error the jobs still
    running are abandoned before the threads are waited for.
    """
    if writers == 1:
        for work, then in jobs:
            then(work())
        return
    running: deque[tuple[Future[_ChunkOutcome], Callable[[_ChunkOutcome], None]]] = deque()
    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="import-writer") as pool:
        try:
            for work, then in jobs:
                running.append((pool.submit(work), then))
                while len(running) >= writers:
                    future, next_step = running.popleft()
                    next_step(future.result())
            while running:
                future, next_step = running.popleft()
                next_step(future.result())
        except BaseException:
            abandon()
            raise


_Parsed = tuple[int, dict[str, Row], list[Reject]]


def _parsed(layout: CsvLayout, rows: Iterator[tuple[int, list[str]]], size: int) -> Iterator[_Parsed]:
    """Each chunk: its number of rows, its good rows by address, and its bad ones (a
    later line with an address the chunk already holds is a duplicate of that line)."""
    while part := list(itertools.islice(rows, size)):
        good: dict[str, Row] = {}
        bad: list[Reject] = []
        for line, cells in part:
            parsed = parse_row(layout, line, cells)
            if isinstance(parsed, Reject):
                bad.append(parsed)
            elif parsed.email in good:
                bad.append(Reject(line, f"email: duplicate of line {good[parsed.email].line}", cells))
            else:
                good[parsed.email] = parsed
        yield len(part), good, bad


def _read_ahead(chunks: Iterator[_Parsed]) -> Iterator[_Parsed]:
    """The chunks, the next one read and checked in a thread while the caller writes this one.

    Writing waits on the database (PostgreSQL's server, SQLite's C code), both of
    which let other Python threads run, so reading the file costs no wall time
    there. One chunk ahead at most: memory stays flat.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-reader") as reader:
        ahead = reader.submit(next, chunks, None)
        while (chunk := ahead.result()) is not None:
            ahead = reader.submit(next, chunks, None)
            yield chunk


@dataclass
class _ChunkOutcome:
    imported: int = 0
    already: int = 0
    rejects: list[Reject] = field(default_factory=list)


def _import_chunk(rt: Runtime, flow: Funnel, file_name: str, rows: list[Row], dry_run: bool, turn: Turn) -> _ChunkOutcome:
    try:
        turn.wait_for_leads()
        if not rows:
            return _ChunkOutcome()
        now = rt.clock.now()
        if dry_run:
            with rt.db.read() as session:
                return _enter(session, rt, flow, file_name, rows, now, write=False, leads_found=turn.leads_found)
        with rt.db.transaction() as session:
            outcome = _enter(session, rt, flow, file_name, rows, now, write=True, leads_found=turn.leads_found)
            turn.wait_to_commit()
        return outcome
    finally:
        turn.leads_found()  # a chunk that failed or had nothing to write holds up no other


_MERGED_COLUMNS = (Lead.first_name, Lead.fields, Lead.tags, Lead.timezone, Lead.owner, Lead.source)


def _known_leads(session: Session, emails: list[str], lock: bool) -> dict[str, Any]:
    """The file's addresses already leads: id and status only, since a rerun meets
    every lead again and decoding their JSON columns was most of its time."""
    known: dict[str, Any] = {}
    for part in chunks(emails, 1000):
        query = select(Lead.id, Lead.email, Lead.status).where(among(session, Lead.email, part)).order_by(Lead.id)
        if lock:
            query = query.with_for_update(key_share=True)
        known.update((row.email, row) for row in session.execute(query))
    return known


def _lead_details(session: Session, ids: list[int], *columns: Any) -> dict[int, Any]:
    found: dict[int, Any] = {}
    for part in chunks(sorted(ids), 1000):
        found.update((row.id, row) for row in session.execute(select(Lead.id, *columns).where(among(session, Lead.id, part))))
    return found


def _enter(
    session: Session, rt: Runtime, flow: Funnel, file_name: str, rows: list[Row], now: datetime, *, write: bool,
    leads_found: Callable[[], None],
) -> _ChunkOutcome:
    """One chunk: the leads it creates or updates, and each one's entry into the funnel's first stage.

    `leads_found` is called once the chunk's leads are created or locked (see `ChunkTurns`)."""
    outcome = _ChunkOutcome()
    first = flow.stages[0]
    double_opt_in = flow.double_opt_in if flow.double_opt_in is not None else rt.settings.double_opt_in
    status = LeadStatus.PENDING if double_opt_in else LeadStatus.ACTIVE
    stamp = now.isoformat().replace("+00:00", "Z")
    created: dict[str, int] = {}
    if write:
        # Inserted first, clashes skipped: a fresh list then needs no lookup by address at all.
        created = dict(insert_returning(session, Lead.__table__, [
            {
                "email": row.email, "first_name": row.first_name, "fields": row.fields, "tags": row.tags, "timezone": row.timezone,
                "source": row.source or None, "owner": row.owner, "status": status,
                "consent": {"at": stamp, "via": "import", "file": file_name, "line": row.line},
                "created_at": now, "updated_at": now, "status_changed_at": now,
            }
            for row in rows
        ], ("email", "id"), conflict=("email",)))
    known = _known_leads(session, sorted(row.email for row in rows if row.email not in created), lock=write)
    if write:  # the one row every chunk's enrollments share, made (when new) before the next chunk looks
        current_version_ids(session, [flow], now)
    leads_found()
    in_funnel: set[int] = set()
    known_ids = [lead.id for lead in known.values()]
    for part in chunks(known_ids, 1000):
        in_funnel.update(session.scalars(
            select(StageEntry.lead_id).where(among(session, StageEntry.lead_id, part), StageEntry.funnel == flow.slug, StageEntry.stage == first.name)
        ))
    suppressed = {lead.id for lead in known.values() if lead.status in SUPPRESSED}
    consents = _lead_details(session, [i for i in known_ids if i in in_funnel and i not in suppressed], Lead.consent) if in_funnel else {}
    details = _lead_details(session, [i for i in known_ids if i not in in_funnel and i not in suppressed], *_MERGED_COLUMNS)
    entering: list[tuple[Row, int | None, dict[str, Any] | None]] = []
    merges: list[dict[str, Any]] = []
    for row in rows:
        lead = known.get(row.email)
        if lead is None:
            entering.append((row, created.get(row.email), None))
            continue
        if lead.id in suppressed:
            outcome.rejects.append(Reject(row.line, f"email: suppressed (lead {lead.status})", row.cells))
            continue
        if lead.id in in_funnel:
            consent = consents[lead.id].consent or {}
            line = consent.get("line") if consent.get("via") == "import" and consent.get("file") == file_name else None
            if isinstance(line, int) and line < row.line:
                outcome.rejects.append(Reject(row.line, f"email: duplicate of line {line}", row.cells))
            else:
                outcome.already += 1
            continue
        entering.append((row, lead.id, {"source": details[lead.id].source, "status": lead.status}))
        merges.append(_merged(details[lead.id], row, now))
    outcome.imported = len(entering)
    if not write or not entering:
        return outcome
    regrouped = {
        merged["id"]: new for merged in merges
        if (new := lead_split_values(merged["owner"], merged["fields"])) != lead_split_values(details[merged["id"]].owner, details[merged["id"]].fields)
    }
    regroup_leads(session, regrouped, lambda: bulk_update(session, Lead.__table__, merges))
    entrants = [
        Entrant(
            lead_id, row.email, known_lead["status"] if known_lead is not None else status,
            lead_channel(known_lead["source"] if known_lead is not None and known_lead["source"] else row.source),
            row.source or None, known=known_lead is not None,
        )
        for row, lead_id, known_lead in entering if lead_id is not None
    ]
    entered = enter_first_stage(session, rt, flow, entrants, at=now, now=now, event_key=lambda lead_id: f"subscribed:{flow.slug}:{lead_id}:import")
    outcome.imported = len(entered)
    outcome.already += len(entrants) - len(entered)
    return outcome


def _merged(lead: Any, row: Row, now: datetime) -> dict[str, Any]:
    """A known lead in the file: new details win, tags and fields are added, the first source stays (as subscribing again)."""
    return {
        "id": lead.id,
        "first_name": row.first_name or lead.first_name,
        "fields": {**(lead.fields or {}), **row.fields},
        "tags": list(dict.fromkeys([*(lead.tags or []), *row.tags])),
        "timezone": row.timezone or lead.timezone,
        "owner": row.owner or lead.owner,
        "source": lead.source or row.source or None,
        "updated_at": now,
    }
