"""Pure logic never imports Ray (DESIGN.md): checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

PURE = [
    "raft.spec",
    "raft.registry",
    "raft.labels",
    "raft.metrics",
    "raft.sources",
    "raft.resources",
    "raft.deepspeed_config",
    "raft.tasks",
    "raft.techniques",
    "raft.export",
    "raft.evaluate",
    "raft.storage",
    "raft.nodes",
    "raft.submission",
    "raft.generation",
    "raft.search",
    "raft.serving",
    "raft.checkpoints",
    "raft.failures",
    "raft.perf",
    "raft.batching",
    "raft.plan",
    "raft.progress",
    "raft.tracking",
    "raft.report",
]


def test_pure_modules_do_not_import_ray():
    code = "import sys\n" + "".join(f"import {m}\n" for m in PURE) + "print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
