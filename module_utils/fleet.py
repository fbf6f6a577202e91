"""Place the plan's images on the builders of a fleet (pure: no engine, no network).

The matrix splits into units that never cross builders: one per GPU target, made of
``base-<gpu>`` and every template image on it, so a target's chain builds on one engine and
its GPU check runs where that GPU is. ``base-common`` is every unit's ancestor: when it is
stale and more than one builder has work, it is built and pushed first (the ``common``
phase) by one builder, and the others pull it from the registry they share.

Placement is longest-processing-time first: units with the fewest builders able to take
them go first, then the costliest, each onto the least-loaded builder that can take it.
A unit for a GPU that no ready builder carries still builds (building needs no GPU) on the
least-loaded builder, and the placement says that its GPU checks will not run. A unit's cost
is the seconds its stale nodes took the last time they were built, where a report says so,
else a weight by kind scaled into seconds by the nodes that were timed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Relative cost of building one stale node when no earlier report timed it.
WEIGHTS = {"base-common": 6.0, "base-gpu": 4.0, "template": 1.0}


class FleetError(ValueError):
    """Nothing can be placed; the message says why and what to do."""


@dataclass(frozen=True)
class Builder:
    name: str
    gpus: tuple[str, ...] = ()


@dataclass
class Placement:
    builder_of: dict[str, str] = field(default_factory=dict)  # node -> builder
    common: dict[str, list[str]] = field(default_factory=dict)  # builder -> first phase
    rest: dict[str, list[str]] = field(default_factory=dict)  # builder -> second phase
    loads: dict[str, float] = field(default_factory=dict)  # builder -> cost placed on it
    gpu_checks: dict[str, bool] = field(default_factory=dict)  # target -> GPU check runs
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "builder_of": self.builder_of,
            "common": self.common,
            "rest": self.rest,
            "loads": {name: round(cost, 1) for name, cost in self.loads.items()},
            "gpu_checks": self.gpu_checks,
            "notes": self.notes,
            "table": self.table(),
        }

    def table(self) -> list[str]:
        """One line per builder: its load and the nodes it builds, first phase marked."""
        rows = [("BUILDER", "LOAD", "NODES")]
        for name, load in self.loads.items():
            first = [f"{n} (first)" for n in self.common.get(name, [])]
            rows.append((name, f"{load:.1f}", ", ".join(first + self.rest.get(name, [])) or "-"))
        width = [max(len(row[i]) for row in rows) for i in range(2)]
        return [f"{row[0].ljust(width[0])}  {row[1].rjust(width[1])}  {row[2]}" for row in rows]


def costs(nodes: Sequence[Mapping[str, Any]], seconds: Mapping[str, float]) -> dict[str, float]:
    """Node -> what building it costs now: 0 unless stale; its seconds in an earlier report;
    else its kind's weight, scaled into seconds by the median seconds-per-weight of the
    nodes that were timed (so timed and untimed nodes weigh alike)."""
    weight = {n["name"]: WEIGHTS.get(n.get("kind", ""), 1.0) for n in nodes}
    stale = [n["name"] for n in nodes if n.get("status") == "stale"]
    ratios = sorted(float(seconds[n]) / weight[n] for n in stale if seconds.get(n))
    scale = ratios[len(ratios) // 2] if ratios else 1.0
    out = dict.fromkeys((n["name"] for n in nodes), 0.0)
    for name in stale:
        out[name] = float(seconds[name]) if seconds.get(name) else weight[name] * scale
    return out


def assign(
    nodes: Sequence[Mapping[str, Any]],
    builders: Sequence[Builder],
    seconds: Mapping[str, float] | None = None,
    any_builder: Sequence[str] = ("cpu",),
) -> Placement:
    """Place every node of the plan (``os-base`` aside) on one of ``builders`` (the ready
    ones, in inventory order). ``seconds``: node -> build time from an earlier report.
    ``any_builder``: CPU targets (no GPU needed): a builder labelled with one takes it, else
    any builder can."""
    if not builders:
        raise FleetError(
            "no builder is ready (each failed to prepare or was unreachable; see above): "
            "fix one and run again"
        )
    cost = costs(nodes, seconds or {})
    names = [b.name for b in builders]
    order = {name: i for i, name in enumerate(names)}
    out = Placement(loads=dict.fromkeys(names, 0.0))
    common = [n for n in nodes if n.get("kind") == "base-common"]
    units: dict[str, list[Mapping[str, Any]]] = {}
    for node in nodes:
        if node.get("kind") in ("base-gpu", "template"):
            units.setdefault(node.get("target") or "", []).append(node)

    def eligible(target: str) -> list[str]:
        labelled = [b.name for b in builders if target in b.gpus]
        if labelled or target not in any_builder:
            return labelled
        return names  # a CPU target nobody labelled: any builder can build and check it

    def sort_key(target: str) -> tuple[int, float, str]:
        able = eligible(target) or names
        return (len(able), -sum(cost[n["name"]] for n in units[target]), target)

    for target in sorted(units, key=sort_key):
        able = eligible(target)
        out.gpu_checks[target] = bool(able) and target not in any_builder
        if not able:
            able = names
            out.notes.append(
                f"{target}: no ready builder carries this GPU (builder_gpus); it builds "
                "without its GPU checks"
            )
        where = min(able, key=lambda b: (out.loads[b], order[b]))
        for node in units[target]:
            out.builder_of[node["name"]] = where
            out.rest.setdefault(where, []).append(node["name"])
            out.loads[where] += cost[node["name"]]

    busy = {
        out.builder_of[n["name"]]
        for unit in units.values()
        for n in unit
        if n.get("status") == "stale"
    }
    for node in common:
        # with the only builder that has work, else on the least-loaded one
        pool = sorted(busy, key=order.get) if len(busy) == 1 else names
        where = min(pool, key=lambda b: (out.loads[b], order[b]))
        out.builder_of[node["name"]] = where
        out.loads[where] += cost[node["name"]]
        if node.get("status") == "stale" and busy - {where}:
            out.common[where] = [node["name"]]  # built and pushed before the others start
        else:
            out.rest.setdefault(where, []).insert(0, node["name"])
    return out


def unready_notes(every: Sequence[str], ready: Sequence[str]) -> list[str]:
    """One line per builder of the inventory that is not ready."""
    return [
        f"builder {name} is not ready (unreachable, or it failed to prepare: see above); "
        "nothing was placed on it"
        for name in every
        if name not in ready
    ]
