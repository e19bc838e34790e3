"""Team-draft interleaving (Radlinski, Kurup and Joachims, CIKM 2008): two rankers, one slate.

Each round, the team with fewer picks so far (a seeded coin when they are even) adds its best
item not yet on the slate, and the slot remembers the team. Clicks and likes on a team's items
credit it, negatives count against it; per slate the team with more credit wins
(:mod:`liverec.experiments.metrics` keeps the counts and the sign test).

Written here rather than taken from a library: it is a dozen lines, and no maintained Python
package serves interleaving for online traffic.

>>> slate = team_draft(["a", "b", "c"], ["b", "d", "a"], 4, seed=1)
>>> sorted(item for item, _ in slate), len({item for item, _ in slate})
(['a', 'b', 'c', 'd'], 4)
"""

from __future__ import annotations

import random
from typing import Sequence


def team_draft(first: Sequence[str], second: Sequence[str], n: int, seed: int) -> list[tuple[str, int]]:
    """Up to ``n`` (item, team) pairs, team 0 for ``first``'s picks and 1 for ``second``'s; no
    item twice, the teams' sizes differ by at most one while both rankers have items left."""
    rng = random.Random(seed)
    rankings = (list(first), list(second))
    cursor = [0, 0]
    picks = [0, 0]
    taken: set[str] = set()
    out: list[tuple[str, int]] = []

    def next_of(team: int) -> str | None:
        ranking = rankings[team]
        while cursor[team] < len(ranking) and ranking[cursor[team]] in taken:
            cursor[team] += 1
        return ranking[cursor[team]] if cursor[team] < len(ranking) else None

    while len(out) < n:
        options = [t for t in (0, 1) if next_of(t) is not None]
        if not options:
            break
        if len(options) == 1:
            team = options[0]
        elif picks[0] != picks[1]:
            team = 0 if picks[0] < picks[1] else 1
        else:
            team = rng.randrange(2)  # the coin of this round
        item = next_of(team)
        assert item is not None
        taken.add(item)
        picks[team] += 1
        out.append((item, team))
    return out
