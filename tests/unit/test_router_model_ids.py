"""Model ids the router compares with `calibrated_for`: the LLM tier's id without starting it, and
the in-process pipeline telling its router which models run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deployments.llm_tier.config import LLMTierConfig
from deployments.llm_tier.default_model import CONVERSION_VERSION, DEFAULT_LLM_NAME
from router import Router, parse_router_config
from router.config import CalibratedFor


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, f"{DEFAULT_LLM_NAME}-v{CONVERSION_VERSION}"),  # the embedded default's converted folder
        ({"model": "/models/Meta-Llama-3-70B-Instruct"}, "Meta-Llama-3-70B-Instruct"),
        ({"model": "meta-llama/Meta-Llama-3-8B-Instruct"}, "Meta-Llama-3-8B-Instruct"),  # hub id: as vLLM's tag
        ({"model": "/m/llama", "served_name": "llama3-prod"}, "llama3-prod"),
        ({"lora_adapter": "/adapters/clinie-sft"}, f"{DEFAULT_LLM_NAME}-v{CONVERSION_VERSION}+lora:clinie-sft"),
        # free decoding answers differently from the grammar-constrained default: another id
        ({"decoding": "free"}, f"{DEFAULT_LLM_NAME}-v{CONVERSION_VERSION}+free"),
    ],
)
def test_llm_model_id_is_the_engines_tag_and_a_valid_calibrated_for_id(fields, expected):
    cfg = LLMTierConfig.model_validate(fields)
    assert cfg.model_id == expected
    # VLLMEngine.model_tag is this id of the folder it loads (the converted default's is the same)
    folder = cfg.model or f"/cache/models/{DEFAULT_LLM_NAME}-v{CONVERSION_VERSION}"
    assert cfg.model_copy(update={"model": folder}).model_id == expected
    assert CalibratedFor(fast="clinie-fast@a9bed267db", llm=cfg.model_id).llm == expected


def test_pipeline_tells_its_router_the_running_models(tmp_path):
    from serve_app.pipeline import Pipeline

    raw = {
        "default_policy": "fast-only",
        "calibrated_for": {"fast": "clinie-fast@a9bed267db", "llm": f"{DEFAULT_LLM_NAME}-v{CONVERSION_VERSION}"},
    }
    router = Router(parse_router_config(raw))
    pipeline = Pipeline(router=router, llm=LLMTierConfig())
    # the fast engine stands in with what the pipeline reads of it (no model is loaded)
    pipeline._fast = SimpleNamespace(cfg=SimpleNamespace(model_dir=tmp_path), model_tag="clinie-fast@a9bed267db")
    pipeline._tiers(True)
    check = router.model_check()
    assert check["running"] == {"fast": "clinie-fast@a9bed267db", "llm": f"{DEFAULT_LLM_NAME}-v{CONVERSION_VERSION}"}
    assert check["match"] is True
    other = Pipeline(router=router, llm=LLMTierConfig(served_name="llama3-prod"))
    other._fast = pipeline._fast
    other._tiers(True)
    assert router.model_check()["mismatches"] == [
        f"llm: calibrated for '{DEFAULT_LLM_NAME}-v{CONVERSION_VERSION}', running 'llama3-prod'"
    ]
