"""deploy/kuberay/rayservice.yaml: valid against KubeRay's RayService CRD, its serveConfigV2 is the
production Serve config (strictly checked), and the cluster it describes fits that config."""

from __future__ import annotations

import copy
import importlib.util
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from clinie.paths import REPO_ROOT
from serve_app.deploy_config import bundle_gpus, load_llm_tier_config, validate_deploy_config

KUBERAY_DIR = REPO_ROOT / "deploy" / "kuberay"
MANIFEST = KUBERAY_DIR / "rayservice.yaml"
DOCKERFILE = KUBERAY_DIR / "Dockerfile"
PRODUCTION = REPO_ROOT / "serve_app" / "configs" / "serve.production.yaml"
CRD = REPO_ROOT.parent / "shared" / "spec" / "kuberay" / "ray.io_rayservices.yaml"
CPU_IMAGE = "registry.example.com/clinie:0.1.0-cpu"
GPU_IMAGE = "registry.example.com/clinie:0.1.0-gpu"


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    if not CRD.exists():
        pytest.skip(f"the KubeRay CRD is not at {CRD} (../shared/spec/kuberay beside the repository)")
    crd = yaml.safe_load(CRD.read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


def unknown_fields(instance: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Paths of keys the structural schema does not declare. JSON Schema (and so jsonschema) lets
    undeclared keys through; Kubernetes prunes them from a custom resource silently, or refuses them
    under `kubectl apply --validate=strict` (field validation Strict). Either way a misspelt field
    is a setting that never takes effect, so the test refuses them as strict validation would."""
    if isinstance(instance, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            at = f"{path}.{key}" if path else key
            if props is not None and key in props:
                yield from unknown_fields(value, props[key], at)
            elif isinstance(extra, dict):
                yield from unknown_fields(value, extra, at)
            elif props is not None and extra is not True:
                yield at
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(instance):
            yield from unknown_fields(item, schema["items"], f"{path}.{i}")


def crd_errors(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every reason the API server would refuse `doc` that can be checked offline: the CRD's
    openAPIV3Schema (OpenAPI v3 schemas are JSON Schema draft 4 plus `x-kubernetes-*` / `nullable`
    keys, which draft 4 ignores), undeclared fields, and the resource name (a DNS-1123 label, which
    KubeRay needs because it names Services after it)."""
    validator = jsonschema.Draft4Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]
    errors += [f"{p}: unknown field" for p in unknown_fields(doc, schema)]
    name = doc.get("metadata", {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 label")
    return errors


def _groups(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def _container(group: dict[str, Any]) -> dict[str, Any]:
    (container,) = group["template"]["spec"]["containers"]
    return container


def _quantity(value: str | int) -> float:
    """A Kubernetes CPU quantity ("16", "500m", 8) in cores."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _ray_cpus(group: dict[str, Any]) -> float:
    """The CPUs Ray advertises on a pod of `group`: rayStartParams num-cpus, else the container's
    CPU limit (what KubeRay passes to `ray start`)."""
    if "num-cpus" in group["rayStartParams"]:
        return float(group["rayStartParams"]["num-cpus"])
    return _quantity(_container(group)["resources"]["limits"]["cpu"])


# -- the manifest against the CRD -----------------------------------------------------------------


def test_manifest_validates_against_the_rayservice_crd(manifest: dict[str, Any], crd_schema: dict[str, Any]) -> None:
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    assert crd_errors(manifest, crd_schema) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m["spec"].update(upgradeStrategy={"typ": "NewCluster"}), "spec.upgradeStrategy.typ: unknown field"),
        (
            lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][1].update(maxReplica=2),
            "spec.rayClusterConfig.workerGroupSpecs.1.maxReplica: unknown field",
        ),
        (
            lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][1].pop("minReplicas"),
            "'minReplicas' is a required property",
        ),
        (
            lambda m: m["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
            "spec.rayClusterConfig.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'",
        ),
        (
            lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0][
                "resources"
            ]["limits"].update({"memory": "1200 GiB"}),
            "does not match",
        ),
        (lambda m: m["spec"].update(serveConfigV2={"applications": []}), "spec.serveConfigV2: "),
        (lambda m: m["metadata"].update(name="Clinie_Prod"), "metadata.name: 'Clinie_Prod' is not a DNS-1123 label"),
    ],
    ids=["typo-spec", "typo-group", "missing-required", "int-for-string", "bad-quantity", "config-not-string", "name"],
)
def test_crd_check_refuses_what_the_api_server_would(
    manifest: dict[str, Any], crd_schema: dict[str, Any], edit: Callable[[dict[str, Any]], None], expected: str
) -> None:
    """The check has teeth: each of these edits is reported, at its path."""
    bad = copy.deepcopy(manifest)
    edit(bad)
    assert any(expected in e for e in crd_errors(bad, crd_schema)), crd_errors(bad, crd_schema)


# -- serveConfigV2 ----------------------------------------------------------------------------------


def test_serve_config_v2_is_the_production_config_verbatim(manifest: dict[str, Any]) -> None:
    """Not a second copy that can drift: the block is serve.production.yaml's text, comments and
    all (deploy/kuberay/sync_serve_config.py writes it)."""
    assert manifest["spec"]["serveConfigV2"] == PRODUCTION.read_text(), (
        "serveConfigV2 differs from serve_app/configs/serve.production.yaml: "
        "run python deploy/kuberay/sync_serve_config.py"
    )


def test_serve_config_v2_passes_the_strict_serve_config_check(manifest: dict[str, Any]) -> None:
    config = validate_deploy_config(yaml.safe_load(manifest["spec"]["serveConfigV2"]), source="serveConfigV2")
    assert [d.name for d in config.applications[0].deployments] == ["Ingress", "FastTier", "LLMTier"]


def test_sync_script_rewrites_only_the_block(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("sync_serve_config", KUBERAY_DIR / "sync_serve_config.py")
    assert spec is not None and spec.loader is not None
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    text = MANIFEST.read_text()
    assert sync.render(text, PRODUCTION.read_text()) == text  # in sync: nothing to change
    changed = PRODUCTION.read_text().replace("max_replicas: 24", "max_replicas: 20")
    out = sync.render(text, changed)
    assert yaml.safe_load(out)["spec"]["serveConfigV2"] == changed
    # Everything before the block is untouched.
    assert out.split(sync.KEY_LINE)[0] == text.split(sync.KEY_LINE)[0]
    # A manifest with a key after the block keeps it.
    trailing = sync.render(text + "status: {}\n", changed)
    assert yaml.safe_load(trailing)["status"] == {}
    assert yaml.safe_load(trailing)["spec"]["serveConfigV2"] == changed


# -- the cluster fits the Serve config --------------------------------------------------------------


def test_gpu_group_holds_exactly_one_tp8_llm_replica_per_pod(manifest: dict[str, Any]) -> None:
    serve = validate_deploy_config(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    app = serve.applications[0]
    llm = app.deployment("LLMTier")
    tp = load_llm_tier_config(app).tensor_parallel_size
    gpu = _groups(manifest)["gpu"]
    limits = _container(gpu)["resources"]["limits"]
    # Kubernetes gives the pod 8 GPUs; KubeRay advertises them to Ray; the LLMTier's STRICT_PACK
    # placement group of 8 one-GPU bundles fits only a node with all 8: one replica per pod.
    assert limits["nvidia.com/gpu"] == _container(gpu)["resources"]["requests"]["nvidia.com/gpu"] == 8
    assert bundle_gpus(llm.placement_group_bundles) == tp == limits["nvidia.com/gpu"]
    assert llm.placement_group_strategy == "STRICT_PACK"
    assert "num-gpus" not in gpu["rayStartParams"]  # taken from the container limit, so they cannot disagree
    # Ray's CPUs there are exactly the bundles' CPUs: no CPU-only replica can be placed on a GPU pod.
    assert llm.placement_group_bundles is not None
    bundle_cpus = sum(b.get("CPU", 0) for b in llm.placement_group_bundles)
    assert _ray_cpus(gpu) == bundle_cpus
    cpu_only_needs = [d.ray_actor_options.num_cpus for d in app.deployments if d.name != "LLMTier"]
    assert min(cpu_only_needs) > _ray_cpus(gpu) - bundle_cpus
    assert _quantity(limits["cpu"]) >= bundle_cpus  # the real cores behind them
    # One pod per replica, so the group's maximum is the Serve maximum.
    assert llm.autoscaling_config is not None
    assert gpu["maxReplicas"] == llm.autoscaling_config.max_replicas
    # Scheduled on GPU nodes, tolerating their taint, with a RAM-backed /dev/shm for NCCL.
    spec = gpu["template"]["spec"]
    assert any(k.startswith("nvidia.com/gpu") for k in spec["nodeSelector"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    shm = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _container(gpu)["volumeMounts"]}
    assert shm[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert _container(gpu)["image"] == GPU_IMAGE


def test_cpu_group_holds_the_cpu_deployments_at_min_and_max(manifest: dict[str, Any]) -> None:
    app = validate_deploy_config(yaml.safe_load(manifest["spec"]["serveConfigV2"])).applications[0]
    cpu = _groups(manifest)["cpu"]
    per_pod = _ray_cpus(cpu)
    cpu_deps = [d for d in app.deployments if d.name != "LLMTier"]
    # Whole replicas per pod (a replica cannot span pods), largest first.
    fast = app.deployment("FastTier").ray_actor_options.num_cpus
    assert fast <= per_pod

    def pods_needed(bound: str) -> int:
        pods, free = 0, 0.0
        needs = sorted(
            (d.ray_actor_options.num_cpus for d in cpu_deps for _ in range(getattr(d.autoscaling_config, bound))),
            reverse=True,
        )
        for need in needs:
            if need > free:
                pods, free = pods + 1, per_pod
            free -= need
        return pods

    assert pods_needed("min_replicas") <= cpu["minReplicas"]
    assert pods_needed("max_replicas") <= cpu["maxReplicas"]
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no replica on the head
    assert _container(cpu)["resources"]["requests"] == _container(cpu)["resources"]["limits"]


def test_ports_images_and_versions_agree(manifest: dict[str, Any]) -> None:
    serve = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ports = {p["name"]: p for p in manifest["spec"]["serveService"]["spec"]["ports"]}
    assert ports["serve"]["targetPort"] == serve["http_options"]["port"]
    assert ports["grpc"]["targetPort"] == serve["grpc_options"]["port"]
    cluster = manifest["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        container = _container(pod)
        names = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert names["serve"] == serve["http_options"]["port"] and names["grpc"] == serve["grpc_options"]["port"]
        assert pod["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert _container(cluster["headGroupSpec"])["image"] == _container(_groups(manifest)["cpu"])["image"] == CPU_IMAGE
    # rayVersion = the Ray the lock installs (and the images carry).
    lock = (REPO_ROOT / "requirements.lock").read_text()
    assert f"ray=={cluster['rayVersion']}\n" in lock
    assert manifest["spec"]["upgradeStrategy"]["type"] == "NewCluster"


def test_dockerfile_builds_the_named_image_from_the_lock_as_non_root() -> None:
    """What can be checked without a container runtime: the Dockerfile installs the lock the way
    the Makefile does, names the manifest's image, and drops root."""
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert f"-t {CPU_IMAGE} ." in text
    install = next(line for line in instructions if "-r requirements.lock" in line)
    assert "--no-deps" in install and "download.pytorch.org/whl/cpu" in install
    lock = (REPO_ROOT / "requirements.lock").read_text().splitlines()
    assert "+cpu" in next(line for line in lock if line.startswith("torch=="))
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("ENV CLINIE_MODEL_DIR=") for line in instructions)
    # Every path the build copies from the context exists in the repository.
    for line in instructions:
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                assert (REPO_ROOT / src).exists(), src


def test_rules_the_operator_checks_beyond_the_crd(manifest: dict[str, Any]) -> None:
    """KubeRay's own validation (its webhook / reconciler, not the CRD schema): group names unique,
    minReplicas <= replicas <= maxReplicas, an upgrade strategy it knows, a head container."""
    groups = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    names = [g["groupName"] for g in groups]
    assert len(names) == len(set(names)) and set(names) == {"cpu", "gpu"}
    for g in groups:
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], g["groupName"]
    assert manifest["spec"]["upgradeStrategy"]["type"] in {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}
    assert _container(manifest["spec"]["rayClusterConfig"]["headGroupSpec"])["name"] == "ray-head"
