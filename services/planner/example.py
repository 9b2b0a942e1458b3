"""A complete example placement planner, as a third party would write one.

It packs guests onto as few hosts as possible, heaviest talkers first. To
register it from another package, declare in that package's pyproject.toml:

    [project.entry-points."vnet.planners"]
    pack = "services.planner.example:PackPlanner"

then run `vnet planner --algorithm pack`.
"""

from __future__ import annotations

import numpy as np

from services.planner.model import IntArray, Problem


class PackPlanner:
    name = "pack"

    def place(self, problem: Problem) -> IntArray:
        placement = problem.current.copy()
        free = problem.slots().copy()
        movable = np.flatnonzero(problem.movable())
        strength = problem.adjacency().strength()
        for guest in movable[np.lexsort((movable, -strength[movable]))].tolist():
            host = int(np.flatnonzero(free > 0)[0])  # Problem guarantees a free slot
            placement[guest] = host
            free[host] -= 1
        return placement
