"""`clinie train-llm`: LoRA supervised fine-tuning (peft) of the LLM tier on the task format.

Examples come from the training split only (the fast tier's split rule, so dev stays unseen):
one step-1 example per sentence (the sentence -> its entities marked) and one step-2 example per
entity (the sentence with the entity marked -> its modifiers marked). Loss is on the answer
tokens only. The same recipe runs on CPU for the embedded default (bounded by `max_steps`) and on
GPUs for LLaMA-3-8B/70B (`device="cuda"`, bf16); vLLM serves the adapter (`lora_adapter`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from clinie.brat import Document, read_corpus
from clinie.markup import render
from clinie.split import split_corpus
from clinie.windows import split_sentences
from deployments.llm_tier.prompts import Message, entity_messages, modifier_messages

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase


class LoRAConfig(BaseModel):
    """LoRA SFT options."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(description="brat folder of annotated notes.")
    output_dir: Path = Field(description="Where the adapter (peft format) is written.")
    model: str = Field(default="", description="Base model dir or hub id; empty: the embedded SmolLM2.")
    dev_size: int = Field(default=20, ge=0, description="Notes held out, same split rule as the fast tier.")
    seed: int = Field(default=13, description="Split, shuffling and initialisation seed.")
    rank: int = Field(default=16, ge=1, le=256, description="LoRA rank r.")
    alpha: int = Field(default=32, ge=1, description="LoRA alpha.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get adapters (LLaMA names).",
    )
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak AdamW learning rate.")
    batch_size: int = Field(default=8, ge=1, description="Examples per step.")
    max_steps: int = Field(default=200, ge=1, description="Optimiser steps (bounds CPU runs).")
    max_length: int = Field(default=512, ge=64, description="Longest example in tokens; longer ones are skipped.")
    max_notes: int | None = Field(default=None, ge=1, description="Use only the first N notes (smoke runs).")
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="Where to train.")


def sft_examples(docs: list[Document]) -> list[tuple[list[Message], str]]:
    """(prompt messages, target text) pairs for both task steps."""
    out: list[tuple[list[Message], str]] = []
    for doc in docs:
        rels: dict[str, list[str]] = {}
        for r in doc.relations:
            rels.setdefault(r.entity, []).append(r.modifier)
        spans = {s.id: s for s in doc.spans}
        for sent in split_sentences(doc.text):
            text = doc.text[sent.start : sent.end]
            inside = [s for s in doc.entities if sent.start <= s.start and s.end <= sent.end]
            local = [(s.label, s.start - sent.start, s.end - sent.start) for s in inside]
            out.append((entity_messages(text), render(text, local)))
            for ent, loc in zip(inside, local, strict=True):
                mods = [
                    spans[m] for m in rels.get(ent.id, []) if sent.start <= spans[m].start and spans[m].end <= sent.end
                ]
                target = render(text, [loc, *((m.label, m.start - sent.start, m.end - sent.start) for m in mods)])
                out.append((modifier_messages(text, loc), target))
    return out


def _encode_examples(
    tok: PreTrainedTokenizerBase, docs: list[Document], max_length: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(input ids, labels) of each SFT example that fits `max_length`, labels -100 on the prompt
    (loss on the answer tokens only), and how many were too long."""
    encoded, skipped = [], 0
    for messages, target in sft_examples(docs):
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        t_ids = [*tok(target, add_special_tokens=False).input_ids, tok.eos_token_id]
        if len(p_ids) + len(t_ids) > max_length:
            skipped += 1
            continue
        encoded.append((p_ids + t_ids, [-100] * len(p_ids) + t_ids))
    if not encoded:
        raise ValueError("no training example fits max_length")
    return encoded, skipped


def _sft_steps(
    model: PeftModel,
    tok: PreTrainedTokenizerBase,
    encoded: list[tuple[list[int], list[int]]],
    cfg: LoRAConfig,
) -> list[float]:
    """`cfg.max_steps` AdamW steps on random batches of `encoded`; the loss of each step."""
    import torch
    from tqdm.auto import tqdm

    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.train()
    losses: list[float] = []
    for _ in tqdm(range(cfg.max_steps), desc="LoRA SFT", unit="step"):
        batch = rng.sample(encoded, min(cfg.batch_size, len(encoded)))
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in batch], device=cfg.device)
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch], device=cfg.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch], device=cfg.device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _save_adapter(
    model: PeftModel,
    cfg: LoRAConfig,
    base: str,
    train_docs: list[Document],
    examples: int,
    skipped: int,
    losses: list[float],
) -> None:
    """Write the adapter (peft format) and its `lora_card.json` into `cfg.output_dir`."""
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(cfg.output_dir))
    card = {
        "base_model": base,
        "train_notes": [d.name for d in train_docs],
        "examples": examples,
        "skipped_too_long": skipped,
        "losses_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "config": cfg.model_dump(mode="json"),
    }
    (cfg.output_dir / "lora_card.json").write_text(json.dumps(card, indent=2))


def train_lora(cfg: LoRAConfig) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deployments.llm_tier.default_model import ensure_default_llm

    torch.manual_seed(cfg.seed)
    base = cfg.model or str(ensure_default_llm())
    docs = read_corpus(cfg.data_dir)[: cfg.max_notes]
    train_docs, _ = split_corpus(docs, min(cfg.dev_size, len(docs) - 1), cfg.seed)
    tok = AutoTokenizer.from_pretrained(base)
    dtype = torch.bfloat16 if cfg.device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(cfg.device)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    encoded, skipped = _encode_examples(tok, train_docs, cfg.max_length)
    losses = _sft_steps(model, tok, encoded, cfg)
    _save_adapter(model, cfg, base, train_docs, len(encoded), skipped, losses)
    return cfg.output_dir
