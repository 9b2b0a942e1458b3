"""Placement planners are plugins, found by name.

A planner decides where guests should live; the overlay links, the rules and
the plan message are built from its answer by the shared pipeline
(:mod:`services.planner.combine`), so a plugin only writes `place`. In-repo
planners are registered here; third-party ones are found through the
entry-point group ``vnet.planners`` (each entry point names a class or a
factory taking no arguments). A planner can also be a separate process: any
process that reads the same bus messages and publishes ``plan`` and
``desired.<host>`` is one (see README.md beside this file).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Protocol, runtime_checkable

from services.planner.baselines import noop_placement, random_placement, round_robin_placement
from services.planner.greedy import greedy_placement
from services.planner.model import IntArray, Problem
from services.planner.partition import PartitionSettings, partition_placement

ENTRY_POINT_GROUP = "vnet.planners"


@runtime_checkable
class PlacementPlanner(Protocol):
    """Return a capacity-feasible placement: one host index per guest."""

    name: str

    def place(self, problem: Problem) -> IntArray: ...


class UnknownPlanner(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class _Function:
    def __init__(self, name: str, fn: Callable[[Problem], IntArray]) -> None:
        self.name = name
        self._fn = fn

    def place(self, problem: Problem) -> IntArray:
        return self._fn(problem)


def _random(seed: int) -> Callable[[Problem], IntArray]:
    return lambda problem: random_placement(problem, seed)


def _partition(settings: PartitionSettings) -> Callable[[Problem], IntArray]:
    return lambda problem: partition_placement(problem, settings)


BUILTIN: dict[str, Callable[[], PlacementPlanner]] = {
    "greedy": lambda: _Function("greedy", greedy_placement),
    "partition": lambda: _Function("partition", _partition(PartitionSettings())),
    "noop": lambda: _Function("noop", noop_placement),
    "random": lambda: _Function("random", _random(0)),
    "round-robin": lambda: _Function("round-robin", round_robin_placement),
}
DEFAULT = "partition"


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    return sorted(set(BUILTIN) | set(_entry_points()))


def load(name: str) -> PlacementPlanner:
    """The planner registered under name; UnknownPlanner lists the known ones."""
    if name in BUILTIN:
        return BUILTIN[name]()
    ep = _entry_points().get(name)
    if ep is None:
        raise UnknownPlanner(f"unknown planner {name!r}: choose from {', '.join(names())}")
    factory = ep.load()
    planner = factory()
    if not isinstance(planner, PlacementPlanner):
        raise TypeError(f"entry point {name!r} ({ep.value}) made {type(planner).__name__},"
                        " which has no name and place(problem)")
    return planner
