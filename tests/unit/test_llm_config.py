from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.llm_tier.config import LLMTierConfig

CONFIGS = Path(__file__).resolve().parents[2] / "serve_app" / "configs"


def test_production_config_validates():
    cfg = LLMTierConfig.model_validate(yaml.safe_load((CONFIGS / "llm_tier.llama3-70b-tp8.yaml").read_text()))
    assert cfg.tensor_parallel_size == 8 and cfg.accelerator == "gpu" and "70B" in cfg.model


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tensor_parallel_size": 2}, "needs accelerator='gpu'"),
        ({"max_new_tokens": 4096, "max_model_len": 2048}, "max_new_tokens"),
        ({"tensor_paralel_size": 8}, "Extra inputs"),
        ({"dtype": "int4"}, "dtype"),
        ({"decoding": "guided"}, "decoding"),
    ],
)
def test_bad_configs_name_the_problem(fields, message):
    with pytest.raises(ValidationError, match=message):
        LLMTierConfig.model_validate(fields)


def test_decoding_is_constrained_by_default_and_free_stays_an_option():
    assert LLMTierConfig().decoding == "constrained"
    assert LLMTierConfig(decoding="free").decoding == "free"
