"""What raft learns about a cluster's nodes, and what it concludes from it. Pure.

``raft.cluster.probe_nodes`` runs one tiny task pinned to each alive node and returns a
``NodeReport`` per node; the decisions (do versions agree, is the run's storage shared)
are plain functions of those reports, tested with reports built by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

VERSIONED = ("python", "ray", "raft", "torch", "transformers", "deepspeed")


@dataclass(frozen=True)
class NodeReport:
    node_id: str
    address: str
    cpus: float
    gpus: float
    is_head: bool = False
    versions: tuple[tuple[str, str], ...] = ()  # (package, version), in VERSIONED order
    sees_storage: bool | None = None  # None: not checked

    def version(self, package: str) -> str:
        return dict(self.versions).get(package, "?")

    @property
    def name(self) -> str:
        return f"{self.address} ({self.node_id[:8]})"


def version_warnings(reports: list[NodeReport]) -> list[str]:
    """One line per package whose version differs between nodes."""
    warnings = []
    for package in VERSIONED:
        seen: dict[str, list[str]] = {}
        for report in reports:
            if report.versions:
                seen.setdefault(report.version(package), []).append(report.name)
        if len(seen) > 1:
            detail = "; ".join(f"{version} on {', '.join(names)}" for version, names in sorted(seen.items()))
            warnings.append(f"{package} differs between nodes: {detail}")
    return warnings


def storage_problems(reports: list[NodeReport], location: str) -> list[str]:
    """Why ``location`` cannot hold a multi-node run's checkpoints (empty when it can)."""
    blind = [report.name for report in reports if report.sees_storage is False]
    if not blind or len(reports) < 2:
        return []
    return [
        f"output.dir {location!r} is not shared by every node: {', '.join(blind)} cannot see "
        "what this node writes there, so their checkpoint shards would be lost. Point output.dir "
        "at storage every node sees: s3://bucket/runs, gs://bucket/runs, or an NFS mount"
    ]


def format_nodes(reports: list[NodeReport]) -> str:
    """The cluster as a table: one row per node."""
    header = ["node", "address", "role", "CPUs", "GPUs", *VERSIONED, "storage"]
    rows = [header]
    for report in sorted(reports, key=lambda r: (not r.is_head, r.address, r.node_id)):
        storage = {None: "-", True: "shared", False: "NOT VISIBLE"}[report.sees_storage]
        rows.append(
            [
                report.node_id[:8],
                report.address,
                "head" if report.is_head else "worker",
                f"{report.cpus:g}",
                f"{report.gpus:g}",
                *(report.version(package) for package in VERSIONED),
                storage,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
