"""ray_cluster.yaml, checked offline: Ray's own launcher checks plus the sizing rules of this project.

`prepare_config` fills in the provider defaults (a file shipped with Ray, no cloud call) and
`validate_config` runs Ray's JSON schema and its cross checks (head type listed, global
max_workers >= the sum of min_workers). Neither knows what the LLM tier needs, hence the rest.
"""

from __future__ import annotations

import copy
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.llm_tier.config import LLMTierConfig

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
LLM_TIER_YAML = REPO / "serve_app" / "configs" / "llm_tier.llama3-70b-tp8.yaml"

# Ray's validate_config needs jsonschema; without it the launcher itself cannot run either.
pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    # prepare_config mutates nested dicts of its input; keep the fixture pristine.
    return prepare_config(copy.deepcopy(raw))


def test_ray_accepts_the_config(prepared: dict[str, Any]) -> None:
    validate_config(prepared)
    assert prepared["cluster_name"] == "clinie"
    assert prepared["provider"] == {"type": "aws", "region": "us-east-1", "cache_stopped_nodes": True}


def test_ray_refuses_a_typo_in_a_node_type(raw: dict[str, Any]) -> None:
    """The JSON schema is what makes the test above meaningful: node types forbid unknown keys."""
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu.worker"]["max_worker"] = 2
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(bad))


def test_min_workers_at_most_max_workers_for_every_node_type(prepared: dict[str, Any]) -> None:
    for name, node_type in prepared["available_node_types"].items():
        assert node_type["min_workers"] <= node_type["max_workers"], name
    worker_types = {k: v for k, v in prepared["available_node_types"].items() if k != prepared["head_node_type"]}
    # The global cap is the sum of the per-type caps (the yaml says why); the head is no worker.
    assert prepared["max_workers"] == sum(t["max_workers"] for t in worker_types.values())
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_gpu_worker_holds_one_whole_tp8_replica(prepared: dict[str, Any]) -> None:
    """One LLMTier replica is one STRICT_PACK placement group of tensor_parallel_size GPU bundles:
    it can only be placed on a single node that has at least that many GPUs."""
    tp = LLMTierConfig(**yaml.safe_load(LLM_TIER_YAML.read_text())).tensor_parallel_size
    assert tp == 8
    gpu_types = {k: v for k, v in prepared["available_node_types"].items() if v["resources"].get("GPU", 0) > 0}
    assert list(gpu_types) == ["gpu.worker"]
    gpu = gpu_types["gpu.worker"]
    assert gpu["resources"]["GPU"] >= tp
    assert gpu["node_config"]["InstanceType"] == "p5.48xlarge"
    assert (gpu["min_workers"], gpu["max_workers"]) == (0, 2)
    # The LLMTier bundles reserve 1 CPU per GPU worker; the node must advertise at least that.
    assert gpu["resources"]["CPU"] >= tp


def test_cpu_types_have_no_gpus_and_head_takes_no_replicas(prepared: dict[str, Any]) -> None:
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"] == {"CPU": 0}
    cpu = types["cpu.worker"]
    assert cpu["resources"].get("GPU", 0) == 0
    assert (cpu["min_workers"], cpu["max_workers"]) == (1, 8)
    assert cpu["node_config"]["InstanceType"] == "m7i.4xlarge"


def test_cpu_group_holds_the_serve_maxima() -> None:
    """The CPU group's capacity covers every CPU deployment at max_replicas (production config)."""
    serve = yaml.safe_load((REPO / "serve_app" / "configs" / "serve.production.yaml").read_text())
    cluster = yaml.safe_load(CLUSTER_YAML.read_text())
    cpu = cluster["available_node_types"]["cpu.worker"]
    need = sum(
        d["autoscaling_config"]["max_replicas"] * d["ray_actor_options"]["num_cpus"]
        for d in serve["applications"][0]["deployments"]
        if not d.get("placement_group_bundles")
    )
    assert need <= cpu["max_workers"] * cpu["resources"]["CPU"]
    assert not math.isclose(need, 0)


def test_gpu_setup_installs_the_gpu_extra(raw: dict[str, Any]) -> None:
    """GPU nodes install `.[gpu]`; that extra must exist in pyproject.toml or pip installs no vLLM
    (pip only warns about a missing extra)."""
    commands = " ".join(raw["available_node_types"]["gpu.worker"]["worker_setup_commands"])
    assert "pip install" in commands and "'.[gpu]'" in commands
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    if "gpu" not in extras:
        pytest.xfail("pyproject.toml has no [project.optional-dependencies] gpu extra yet (vllm for CUDA)")
    assert any(req.replace(" ", "").startswith("vllm") for req in extras["gpu"])
