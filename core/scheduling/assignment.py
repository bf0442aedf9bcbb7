"""Who counts what (pure).

Each task has a chain of pools: the item's owner, then the zone's team (and counters who cover that zone),
then the warehouse's default team. A task goes to the first pool in its chain that has an available counter
with capacity left. Within a pool, the most urgent tasks are taken first, up to the pool's free capacity; the
chosen tasks are then sorted in walking order and cut into contiguous runs, one per counter, sized by each
counter's free minutes, so every counter walks one stretch of the warehouse. Work that fits nowhere stays
unassigned and is reported. Everything is ordered by explicit keys, so ties break the same way every time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Counter:
    id: int
    employee_no: str
    capacity_minutes: float
    team_id: int | None = None
    zone_ids: frozenset[int] = frozenset()
    available: bool = True
    used_minutes: float = 0.0  # already assigned for the day (a re-plan keeps earlier assignments)

    @property
    def free(self) -> float:
        return max(self.capacity_minutes - self.used_minutes, 0.0) if self.available else 0.0


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    priority: int
    walk_key: tuple[int, ...]  # (warehouse, location sequence, ...) walking order
    est_minutes: float
    owner_id: int | None = None
    zone_id: int | None = None
    zone_team_id: int | None = None
    warehouse_team_id: int | None = None


@dataclass(slots=True)
class AssignmentResult:
    assignee: dict[int, int] = field(default_factory=dict)  # job id -> counter id
    unassigned: list[int] = field(default_factory=list)
    minutes: dict[int, float] = field(default_factory=dict)  # counter id -> minutes assigned now


Pool = tuple[str, int]  # ("owner", user id) | ("zone", zone id) | ("team", team id)


def _chain(job: Job) -> list[Pool]:
    chain: list[Pool] = []
    if job.owner_id is not None:
        chain.append(("owner", job.owner_id))
    if job.zone_id is not None:
        chain.append(("zone", job.zone_id))
    if job.warehouse_team_id is not None:
        chain.append(("team", job.warehouse_team_id))
    return chain


def _members(pool: Pool, job_zone_team: dict[int, int | None], counters: Sequence[Counter]) -> list[Counter]:
    kind, key = pool
    if kind == "owner":
        out = [c for c in counters if c.id == key]
    elif kind == "zone":
        team = job_zone_team.get(key)
        out = [c for c in counters if key in c.zone_ids or (team is not None and c.team_id == team)]
    else:
        out = [c for c in counters if c.team_id == key]
    return sorted(out, key=lambda c: c.employee_no)


def _split_contiguous(jobs: list[Job], members: list[Counter]) -> list[tuple[Job, Counter]]:
    """Cut jobs (walking order) into runs sized by each member's free minutes."""
    total_job = sum(j.est_minutes for j in jobs)
    total_free = sum(m.free for m in members)
    out: list[tuple[Job, Counter]] = []
    i = 0
    for k, m in enumerate(members):
        last = k == len(members) - 1
        target = total_job * (m.free / total_free) if total_free else 0.0
        took = 0.0
        while i < len(jobs):
            j = jobs[i]
            if j.est_minutes > m.free + 1e-9:
                break
            # take the job if it brings us closer to this member's share (or we're the last one)
            if not last and took + j.est_minutes / 2 > target:
                break
            out.append((j, m))
            m.used_minutes += j.est_minutes
            took += j.est_minutes
            i += 1
    # anything left (rounding at the boundaries): first member with room, in employee order
    for j in jobs[i:]:
        for m in members:
            if j.est_minutes <= m.free + 1e-9:
                out.append((j, m))
                m.used_minutes += j.est_minutes
                break
    return out


def assign(jobs: Iterable[Job], counters: Sequence[Counter]) -> AssignmentResult:
    """Assign jobs to counters. Counters' ``used_minutes`` are updated in place."""
    result = AssignmentResult()
    all_jobs = sorted(jobs, key=lambda j: (j.priority, j.walk_key, j.id))
    zone_team = {j.zone_id: j.zone_team_id for j in all_jobs if j.zone_id is not None}
    chains = {j.id: _chain(j) for j in all_jobs}
    # Pools are processed level by level: all owners first, then zones, then warehouse teams, so a job only
    # falls to a wider pool after its narrower pools are full.
    unplaced = all_jobs
    for level in ("owner", "zone", "team"):
        pending: dict[Pool, list[Job]] = {}
        for j in unplaced:
            pool = next((p for p in chains[j.id] if p[0] == level), None)
            if pool is not None:
                pending.setdefault(pool, []).append(j)
        placed: set[int] = set()
        for pool in sorted(pending):
            members = [m for m in _members(pool, zone_team, counters) if m.free > 0]
            if not members:
                continue
            # most urgent first, up to the pool's free minutes
            chosen: list[Job] = []
            budget = sum(m.free for m in members)
            for j in sorted(pending[pool], key=lambda j: (j.priority, j.walk_key, j.id)):
                if j.est_minutes <= budget + 1e-9:
                    chosen.append(j)
                    budget -= j.est_minutes
            chosen.sort(key=lambda j: (j.walk_key, j.id))
            for j, m in _split_contiguous(chosen, members):
                result.assignee[j.id] = m.id
                result.minutes[m.id] = result.minutes.get(m.id, 0.0) + j.est_minutes
                placed.add(j.id)
        unplaced = [j for j in unplaced if j.id not in placed]
    result.unassigned = sorted(j.id for j in unplaced)
    return result
