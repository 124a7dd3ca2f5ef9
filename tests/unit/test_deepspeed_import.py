"""A Train worker imports DeepSpeed without MLflow (raft.worker._import_deepspeed):
DeepSpeed's autotuner imports MLflow whenever it is installed, a cost every worker paid at
start-up for a tool raft never runs. MLflow must stay importable afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, sys
from raft.worker import _import_deepspeed
deepspeed = _import_deepspeed()
from deepspeed.autotuning import autotuner
loaded_with_deepspeed = "mlflow" in sys.modules
import mlflow
print(json.dumps({"loaded_with_deepspeed": loaded_with_deepspeed,
                  "autotuner_has_mlflow": autotuner.has_mlflow,
                  "mlflow_after": mlflow.__name__,
                  "same_module": _import_deepspeed() is deepspeed}))
"""


def test_deepspeed_is_imported_without_mlflow_which_still_imports_after():
    env = os.environ | {"DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "loaded_with_deepspeed": False,
        "autotuner_has_mlflow": False,
        "mlflow_after": "mlflow",
        "same_module": True,
    }
