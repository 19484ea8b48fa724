"""A model's lineage as a graph drawn server-side in SVG: dataset version → training run →
version → its children (compressed by ``stratum compress``, fine-tuned by the online
learner). Columns are the distance from the data; the template escapes every label."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stratum.errors import NotFoundError
from stratum.store import models as m
from stratum.store.metadata import MetadataStore

MAX_VERSIONS = 80  # the newest ones, with their ancestors
NODE_W, NODE_H, COL_W, ROW_H = 190, 42, 230, 58


@dataclass
class Node:
    id: str
    kind: str  # dataset | run | version
    label: str
    sub: str = ""
    href: str = ""
    col: int = 0
    row: int = 0

    @property
    def x(self) -> int:
        return 10 + self.col * COL_W

    @property
    def y(self) -> int:
        return 10 + self.row * ROW_H


@dataclass
class Edge:
    src: Node
    dst: Node
    label: str = ""

    @property
    def path(self) -> str:
        x1, y1 = self.src.x + NODE_W, self.src.y + NODE_H // 2
        x2, y2 = self.dst.x, self.dst.y + NODE_H // 2
        mid = (x1 + x2) // 2
        return f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"

    @property
    def label_x(self) -> int:
        return (self.src.x + NODE_W + self.dst.x) // 2

    @property
    def label_y(self) -> int:
        return (self.src.y + self.dst.y) // 2 + NODE_H // 2 - 4


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    left_out: int = 0  # older versions not drawn

    @property
    def width(self) -> int:
        return 20 + (max((n.col for n in self.nodes.values()), default=0) + 1) * COL_W

    @property
    def height(self) -> int:
        return 20 + (max((n.row for n in self.nodes.values()), default=0) + 1) * ROW_H

    def add(self, node: Node) -> Node:
        if node.id not in self.nodes:
            node.row = sum(1 for n in self.nodes.values() if n.col == node.col)
            self.nodes[node.id] = node
        return self.nodes[node.id]


def made_by(spec: dict[str, Any]) -> str:
    """How a child version was made from its parent, in a word or two."""
    lineage = spec.get("lineage") or {}
    if comp := lineage.get("compression"):
        return str(comp.get("pass", "compressed"))
    if (lineage.get("extra") or {}).get("online"):
        return "online fine-tune"
    return "derived"


def build(meta: MetadataStore, name: str, prefix: str) -> Graph:
    versions = meta.model_versions(name)
    if not versions:
        raise NotFoundError(f"model {name!r} does not exist", hint="see the Models page")
    by_id = {mv.id: mv for mv in versions}
    shown = {mv.id for mv in versions[-MAX_VERSIONS:]}
    for mv in versions[-MAX_VERSIONS:]:  # and every ancestor, so each chain reaches its data
        up = mv.parent_id
        while up is not None and up in by_id and up not in shown:
            shown.add(up)
            up = by_id[up].parent_id
    g = Graph(left_out=len(versions) - len(shown))
    depth: dict[int, int] = {}

    def depth_of(mv: m.ModelVersion) -> int:
        if mv.id not in depth:
            parent = by_id.get(mv.parent_id) if mv.parent_id is not None else None
            depth[mv.id] = 0 if parent is None or parent.id not in shown else \
                depth_of(parent) + 1
        return depth[mv.id]

    runs: dict[str, m.Run | None] = {}
    for mv in versions:
        if mv.id not in shown:
            continue
        node = g.add(Node(f"v:{mv.version}", "version", f"{name} v{mv.version}",
                          _metric(mv.metrics), f"{prefix}/models/{name}#v{mv.version}",
                          col=2 + depth_of(mv)))
        parent = by_id.get(mv.parent_id) if mv.parent_id is not None else None
        if parent is not None and parent.id in shown:
            g.edges.append(Edge(g.nodes[f"v:{parent.version}"], node, made_by(mv.spec)))
            continue
        lineage = mv.spec.get("lineage") or {}
        source: Node | None = None
        if lineage.get("dataset_version"):
            ds = str(lineage.get("dataset") or "?")
            source = g.add(Node(f"d:{ds}@{lineage['dataset_version']}", "dataset",
                                f"{ds}@{str(lineage['dataset_version'])[:12]}", "dataset version",
                                f"{prefix}/datasets/{ds}", col=0))
        if mv.run_id:
            if mv.run_id not in runs:
                try:
                    runs[mv.run_id] = meta.run(mv.run_id)
                except NotFoundError:
                    runs[mv.run_id] = None
            run = runs[mv.run_id]
            rnode = g.add(Node(f"r:{mv.run_id}", "run", f"run {mv.run_id[:8]}",
                               f"{run.strategy} · {run.status}" if run else "run",
                               f"{prefix}/runs/{mv.run_id}", col=1))
            if source is not None and all(e.dst is not rnode for e in g.edges):
                g.edges.append(Edge(source, rnode, "trained on"))
            source = rnode
        if source is not None:
            g.edges.append(Edge(source, node, "registered"))
    return g


def _metric(metrics: dict[str, Any]) -> str:
    for key in ("accuracy", "test_accuracy", "r2", "test_r2"):
        if isinstance(metrics.get(key), int | float):
            return f"{key} {metrics[key]:.4f}"
    return ""


__all__ = ["COL_W", "NODE_H", "NODE_W", "ROW_H", "Edge", "Graph", "Node", "build", "made_by"]
