"""Who may do what for a line: the users holding a role, the warehouses (sites) each person belongs to, and the
people eligible to recount, review or decide a variance. The workflow, the cards and the jobs ask here, so a
card never offers a decision the workflow would refuse.

**Sites.** A person belongs to the warehouses whose default team is their team, whose zones' team is their team,
or whose zones they cover (the planner's pools, ``core.scheduling``). A person tied to no warehouse works for the
whole company.

**Site supervisors.** A warehouse that has a supervisor of its own is theirs: its variances are reviewed and its
approval steps decided only by its supervisors, never by another site's (宁波's supervisor does not approve
杭州's variance). A warehouse with no supervisor of its own is served by the supervisors tied to no warehouse.
When that leaves nobody (the site's only supervisor counted the line), a step moves up its escalation chain
(``core.variance.service.staff_step``). Finance, managers and admins work for the whole company.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.enums import Role
from core.models import User, UserZone, Warehouse, Zone


async def holders(session: AsyncSession, *roles: Role, exclude: Collection[int] = ()) -> list[User]:
    """Active users holding any of ``roles``, minus ``exclude``, by id."""
    wanted = {r.value for r in roles}
    users = (await session.execute(select(User).where(User.active.is_(True)).order_by(User.id))).scalars()
    return [u for u in users if wanted & set(u.roles or []) and u.id not in exclude]


async def team_warehouses(session: AsyncSession) -> dict[int, set[int]]:
    """Warehouse ids per team: a team looks after the warehouses it is the default team of, and those with a zone
    of that team."""
    out: dict[int, set[int]] = defaultdict(set)
    for wid, tid in (
        await session.execute(
            select(Warehouse.id, Warehouse.default_team_id).where(Warehouse.default_team_id.is_not(None))
        )
    ).all():
        if tid is not None:
            out[tid].add(wid)
    for wid, tid in (
        await session.execute(select(Zone.warehouse_id, Zone.team_id).where(Zone.team_id.is_not(None)))
    ).all():
        if tid is not None:
            out[tid].add(wid)
    return dict(out)


async def sites(session: AsyncSession, users: Iterable[User]) -> dict[int, set[int]]:
    """The warehouse ids each user belongs to (empty: the whole company)."""
    users = list(users)
    by_team = await team_warehouses(session)
    zone_wh = dict((await session.execute(select(Zone.id, Zone.warehouse_id))).all())
    ids = {u.id for u in users}
    covered: dict[int, set[int]] = defaultdict(set)
    for uid, zid in (await session.execute(select(UserZone.user_id, UserZone.zone_id))).all():
        if uid in ids and zid in zone_wh:
            covered[uid].add(zone_wh[zid])
    return {
        u.id: set(by_team.get(u.team_id, ()) if u.team_id is not None else ()) | covered.get(u.id, set())
        for u in users
    }


async def site_holders(
    session: AsyncSession, role: Role, warehouse_id: int, *, exclude: Collection[int] = ()
) -> list[User]:
    """Who holding ``role`` may act for ``warehouse_id``, minus ``exclude`` (see the module's rules): for a
    supervisor, the warehouse's own supervisors when it has any, else those tied to no warehouse."""
    people = await holders(session, role)
    if role is Role.SUPERVISOR:
        where = await sites(session, people)
        own = [u for u in people if warehouse_id in where[u.id]]
        people = own or [u for u in people if not where[u.id]]
    return [u for u in people if u.id not in exclude]


def team_first(people: list[User], team_id: int | None) -> list[User]:
    """The line's own team when it has someone among ``people``; everyone otherwise (who gets the card)."""
    if team_id is None:
        return people
    same = [u for u in people if u.team_id == team_id]
    return same or people
