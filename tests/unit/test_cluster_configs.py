"""The cluster configs raft ships: valid for the tool that reads them, secure by default,
and pointing at files and versions that exist."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest
import yaml

from raft.spec import load_spec
from raft.submission import runtime_env

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


def ray_schema() -> dict:
    import importlib.util

    ray_dir = Path(importlib.util.find_spec("ray").origin).parent  # no `import ray` in unit tests
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_ray_up_config_validates_against_rays_schema():
    config = load(CLUSTER / "aws.yaml")
    jsonschema.validate(config, ray_schema())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu_types = [name for name, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert len(gpu_types) >= 1 and config["head_node_type"] not in gpu_types


def test_ray_up_config_installs_raft_and_keeps_auth_on():
    config = load(CLUSTER / "aws.yaml")
    assert config["file_mounts"]["~/raft"] == "."
    assert any("pip install -e ~/raft" in command for command in config["setup_commands"])
    for command in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in command
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" not in head and "--dashboard-host=$(hostname -I" in head


def kuberay(name: str) -> dict:
    return load(CLUSTER / "kuberay" / name)


def cluster_specs() -> list[dict]:
    return [kuberay("raycluster.yaml")["spec"], kuberay("rayjob.yaml")["spec"]["rayClusterSpec"]]


def containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


@pytest.mark.parametrize(("name", "kind"), [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifests_have_their_kind(name, kind):
    manifest = kuberay(name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind and manifest["metadata"]["name"]


@pytest.mark.parametrize("cluster_spec", cluster_specs(), ids=["RayCluster", "RayJob"])
def test_kuberay_clusters_are_secure_and_match_raft(cluster_spec):
    assert cluster_spec["rayVersion"] == version("ray")
    assert cluster_spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # never a public LoadBalancer
    assert cluster_spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    for container in containers(cluster_spec):
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "raft-ray-token"
    gpu_workers = [
        c for g in cluster_spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]
        if c["resources"]["limits"].get("nvidia.com/gpu")
    ]  # fmt: skip
    assert gpu_workers
    images = {c["image"] for c in containers(cluster_spec)}
    assert len(images) == 1  # head and workers run the same raft


def test_rayjob_runs_a_shipped_spec_that_validates():
    job = kuberay("rayjob.yaml")["spec"]
    program, command, spec_file, *overrides = shlex.split(job["entrypoint"])
    assert (program, command) == ("raft", "train")
    assert (ROOT / spec_file).is_file(), spec_file
    spec = load_spec(ROOT / spec_file, overrides)
    assert spec.output.dir.startswith("/mnt/shared")  # storage every node mounts
    mounts = {m["mountPath"] for c in containers(job["rayClusterSpec"]) for m in c["volumeMounts"]}
    assert mounts == {"/mnt/shared"}
    workers = sum(g["replicas"] for g in job["rayClusterSpec"]["workerGroupSpecs"])
    assert spec.scaling.use_gpu and workers >= spec.scaling.num_workers
    assert yaml.safe_load(job["runtimeEnvYAML"])["working_dir"] == "/home/ray/raft"


def test_docker_image_uses_the_ray_raft_pins():
    first = next(
        line for line in (CLUSTER / "Dockerfile").read_text().splitlines() if line.startswith("FROM")
    )
    assert re.search(rf"rayproject/ray:{re.escape(version('ray'))}-py311", first), first


def test_cluster_script_is_valid_bash_and_binds_privately():
    script = CLUSTER / "raft-cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert '--dashboard-host="$ip"' in text and "0.0.0.0" not in text.replace("never 0.0.0.0", "")
    assert "RAY_AUTH_MODE=token" in text
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "raft-cluster.sh head" in usage.stdout


def test_job_runtime_env_is_usable():
    env = runtime_env(ROOT / "jobs" / "runtime_env.yaml", ROOT)
    assert env["working_dir"] == str(ROOT) and ".venv" in env["excludes"]
