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


@pytest.mark.parametrize(
    ("name", "kind"),
    [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob"), ("rayservice.yaml", "RayService")],
)
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


def test_rayservice_serves_what_raft_serve_build_writes():
    from ray.serve.schema import ServeDeploySchema  # Ray's own schema (no cluster)

    from raft import serving

    config = yaml.safe_load(kuberay("rayservice.yaml")["spec"]["serveConfigV2"])
    parsed = ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == serving.IMPORT_PATH == "raft.serve:build_app"
    section = serving.ServeSection.model_validate(app["args"]["serve"])  # what build_app reads
    # The whole config follows from that serve block, as `raft serve --build` writes it.
    expected = serving.serve_config(section, app["args"]["model_dir"], app["name"])
    expected["applications"][0]["args"]["serve"] = app["args"]["serve"]
    assert config == expected
    # KubeRay's serve Service and health checks reach each pod's Serve proxy over the pod
    # network on 8000; a proxy on 127.0.0.1 would never become ready.
    assert (parsed.http_options.host, parsed.http_options.port) == ("0.0.0.0", 8000)
    assert (section.host, section.port) == ("0.0.0.0", 8000)


def test_rayservice_cluster_matches_the_raycluster_and_holds_the_replicas():
    service = kuberay("rayservice.yaml")["spec"]
    cluster_spec, reference = service["rayClusterConfig"], kuberay("raycluster.yaml")["spec"]
    assert cluster_spec["rayVersion"] == reference["rayVersion"] == version("ray")
    assert cluster_spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # never a public LoadBalancer
    assert cluster_spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    # Token auth managed by KubeRay (it must send the token to deploy serveConfigV2), so no
    # hand-set RAY_AUTH_* variables that would disagree with its Secret.
    assert cluster_spec["authOptions"]["mode"] == "token"
    for container in containers(cluster_spec):
        assert not [e for e in container.get("env", []) if e["name"].startswith("RAY_AUTH")]

    images = {c["image"] for c in containers(cluster_spec)}
    assert images == {c["image"] for c in containers(reference)} and len(images) == 1

    def head(spec: dict) -> dict:
        return spec["headGroupSpec"]["template"]["spec"]

    def gpu_group(spec: dict) -> dict:
        return next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")

    assert head(cluster_spec)["containers"][0]["resources"] == head(reference)["containers"][0]["resources"]
    workers = gpu_group(cluster_spec)
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["resources"] == gpu_group(reference)["template"]["spec"]["containers"][0]["resources"]

    def volumes(spec: dict) -> set[tuple[str, str]]:
        groups = [head(spec), *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for g in groups for v in g["volumes"]}
        return {(claims[m["name"]], m["mountPath"]) for c in containers(spec) for m in c["volumeMounts"]}

    assert volumes(cluster_spec) == volumes(reference) == {("raft-shared-runs", "/mnt/shared")}

    # The model is on that volume, where rayjob.yaml's run exports it.
    (app,) = yaml.safe_load(service["serveConfigV2"])["applications"]
    assert app["args"]["model_dir"].startswith("/mnt/shared/runs/")
    # The GPU group can grow to hold every replica autoscaling may ask for.
    section = app["args"]["serve"]
    most = section["autoscaling"]["max_replicas"] if section["autoscaling"] else section["num_replicas"]
    limits = worker["resources"]["limits"]
    per_pod = int(float(limits["cpu"]) // section["num_cpus"])
    if section["num_gpus"]:
        per_pod = min(per_pod, int(float(limits["nvidia.com/gpu"]) // section["num_gpus"]))
    assert per_pod >= 1 and workers["maxReplicas"] * per_pod >= most
    assert cluster_spec["enableInTreeAutoscaling"] is True


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
