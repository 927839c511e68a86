"""`clinie train`: fit the joint entity/modifier/relation tagger (or, with the `markers` relation
head, the tagger and a separate relation classifier), export, evaluate.

One run writes a complete model directory: ONNX (fp32 and int8), tokenizers, `fast_tier.json`
(what serving reads), `model_card.json` (data hash, split, hyper-parameters, dev scores) and
`confidence_calibration.json` (fitted on the dev split; absent with `split="all"`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from clinie.brat import Document, corpus_hash, read_corpus
from clinie.ood import OOD_FILE, OODStats
from clinie.split import split_corpus
from clinie.windows import split_sentences
from deployments.fast_tier import features as F
from deployments.fast_tier.config import (
    CARD_NAME,
    GRAPH_ATTENTION,
    MANIFEST_NAME,
    QUANT_RECIPE,
    ModelManifest,
    SpanFloor,
    TrainConfig,
    embedded_encoder_dir,
)
from deployments.fast_tier.pairs import PairIndex, pair_index
from deployments.fast_tier.training.fast_dropout import use_fast_dropout
from deployments.fast_tier.training.modeling import JointTagger, RelationClassifier, load_encoder, save_module

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class TaggerExample:
    ids: list[int]
    entity_tags: list[int]
    modifier_tags: list[int]
    pairs: PairIndex | None = None  # gold candidate pairs inside the window (positions in `ids`)
    pair_labels: np.ndarray | None = None  # 1: related


@dataclass
class _NotePairs:
    """A note's gold candidate pairs (positions in the note's word-pieces) and their labels."""

    index: PairIndex
    labels: np.ndarray


def note_pairs(doc: Document, offsets: Sequence[tuple[int, int]]) -> _NotePairs:
    """Every allowed-type (entity, modifier) pair of gold spans in one sentence, labelled: the
    span-pair head's training candidates (at inference: the same rule over decoded spans)."""
    ents = [(s.label, s.start, s.end) for s in doc.entities]
    mods = [(s.label, s.start, s.end) for s in doc.modifiers]
    cands = F.candidate_pairs(ents, mods, split_sentences(doc.text))
    gold = {(r.entity, r.modifier) for r in doc.relations}
    labels = np.array([int((doc.entities[c.entity].id, doc.modifiers[c.modifier].id) in gold) for c in cands])
    return _NotePairs(pair_index(offsets, ents, mods, cands), labels.astype(np.float32))


def _in_window(pairs: _NotePairs, start: int, end: int) -> np.ndarray:
    """Which pairs have all four positions in word-pieces [start, end) (a boolean mask)."""
    ix = pairs.index
    return (np.minimum(ix.e_first, ix.m_first) >= start) & (np.maximum(ix.e_last, ix.m_last) < end)


@dataclass
class PairCounts:
    """For the model card: the gold candidate pairs of the span-pair head's training notes."""

    candidates: int = 0
    positive: int = 0
    outside: int = 0  # in no one window whole: the head never trains on these

    def add(self, pairs: _NotePairs, held: np.ndarray) -> None:
        self.candidates += len(pairs.labels)
        self.positive += int(pairs.labels.sum())
        self.outside += int((~held).sum())


@dataclass
class RelationExample:
    ids: list[int]
    entity_pos: int
    modifier_pos: list[int]
    labels: list[int]


def tagger_examples(
    docs: Sequence[Document], tok: F.Tokenizer, cfg: TrainConfig, special: F.SpecialIds
) -> tuple[list[TaggerExample], int, PairCounts]:
    """Tagger windows with their BIO tags (and, for the span-pair head, the gold candidate pairs
    inside each window); the overlapping spans dropped; the pair counts for the model card."""
    examples, collisions, counts = [], 0, PairCounts()
    for doc in docs:
        note = F.encode_note(tok, doc.text, cfg.window_tokens, cfg.window_stride)
        ent, c1 = F.bio_tags(note.offsets, [(s.label, s.start, s.end) for s in doc.entities], F.ENTITY_TAGS)
        mod, c2 = F.bio_tags(note.offsets, [(s.label, s.start, s.end) for s in doc.modifiers], F.MODIFIER_TAGS)
        collisions += c1 + c2
        pairs = note_pairs(doc, note.offsets) if cfg.relation_head == "span_pair" else None
        held = np.zeros(len(pairs.labels) if pairs is not None else 0, bool)
        for w in note.windows:
            ex = TaggerExample(
                ids=F.window_inputs(note, w, special),
                entity_tags=[IGNORE, *ent[w.start : w.end], IGNORE],
                modifier_tags=[IGNORE, *mod[w.start : w.end], IGNORE],
            )
            if pairs is not None:
                keep = _in_window(pairs, w.start, w.end)
                held |= keep
                # moved to the window's input positions (after its [CLS])
                ex.pairs, ex.pair_labels = pairs.index.select(keep).shifted(1 - w.start), pairs.labels[keep]
            examples.append(ex)
        if pairs is not None:
            counts.add(pairs, held)
    return examples, collisions, counts


def relation_examples(
    docs: Sequence[Document], tok: F.Tokenizer, cfg: TrainConfig, special: F.SpecialIds
) -> tuple[list[RelationExample], int]:
    """Gold entities with their allowed candidate modifiers (same sentence), each pair labelled."""
    examples, skipped = [], 0
    for doc in docs:
        ents, mods = doc.entities, doc.modifiers
        gold = {(r.entity, r.modifier) for r in doc.relations}
        groups, n_skipped = F.group_inputs(
            tok,
            special,
            doc.text,
            split_sentences(doc.text),
            [(s.label, s.start, s.end) for s in ents],
            [(s.label, s.start, s.end) for s in mods],
            cfg.relation_context_chars,
            cfg.relation_max_tokens,
        )
        skipped += n_skipped
        for g in groups:
            labels = [int((ents[g.entity].id, mods[m].id) in gold) for m in g.modifiers]
            examples.append(RelationExample(g.ids, g.entity_pos, g.modifier_pos, labels))
    return examples, skipped


def _batches(lengths: Sequence[int], size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding): sort within pools of 50 batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = size * 50
    batches = []
    for p in range(0, len(order), pool):
        chunk = sorted(order[p : p + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return batches


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (otherwise autocast is slower than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def uses_bf16(cfg: TrainConfig, warn: bool = True) -> bool:
    """Whether training runs under bf16 autocast; warns (unless `warn` is off) where `bf16: on` asks
    for it on a CPU that has no native bf16 (emulated, a step took 20x the fp32 one:
    benchmarks/train_step.py)."""
    native = native_bf16()
    if warn and cfg.bf16 == "on" and not native:
        log.warning(
            "bf16: on, but this CPU has no native bf16 (avx512_bf16 / AMX): training steps will be many "
            "times slower than in fp32 (20x measured on an AVX2 CPU); bf16: auto uses it only where it pays"
        )
    return cfg.bf16 == "on" or (cfg.bf16 == "auto" and native)


def _total_steps(epoch_size: int, epochs: float, batch_size: int, cfg: TrainConfig) -> int:
    """Optimiser steps of `epochs` passes over `epoch_size` examples, capped by `max_steps`."""
    total = max(1, math.ceil(math.ceil(epoch_size / batch_size) * epochs))
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total


def optimiser(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """The recipe's AdamW over `model` (an encoder and its heads): the word embeddings frozen where
    `cfg` says so, the encoder at its own learning rate, the heads at theirs. Parameters frozen
    before the call stay out of it."""
    if cfg.freeze_word_embeddings:
        model.encoder.get_input_embeddings().weight.requires_grad_(False)  # type: ignore[attr-defined]
    enc_lr = cfg.encoder_learning_rate or cfg.learning_rate
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]  # type: ignore[attr-defined]
    enc_ids = {id(p) for p in model.encoder.parameters()}  # type: ignore[attr-defined]
    head_params = [p for p in model.parameters() if id(p) not in enc_ids]
    return torch.optim.AdamW(
        [{"params": encoder_params, "lr": enc_lr}, {"params": head_params, "lr": cfg.learning_rate}],
        weight_decay=cfg.weight_decay,
    )


def _fit(
    model: torch.nn.Module,
    lengths: Sequence[int],
    loss_of: Callable[[list[int]], torch.Tensor],
    total: int,
    batch_size: int,
    cfg: TrainConfig,
    desc: str,
) -> list[float]:
    """AdamW with linear warm-up and decay over `total` steps (`_total_steps`); returns the mean
    loss of each pass over `lengths`. Dropout masks are drawn by training/fast_dropout.py where
    `cfg.fast_dropout` says so."""
    rng = random.Random(cfg.seed)
    opt = optimiser(model, cfg)
    use_bf16 = uses_bf16(cfg)
    warmup = max(1, int(total * cfg.warmup_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    use_fast_dropout(model, cfg.fast_dropout)  # the cheaper masks for the fit only
    model.train()
    losses: list[float] = []
    step = 0
    bar = tqdm(total=total, desc=desc, unit="step")
    while step < total:
        epoch_losses = []
        for batch in _batches(lengths, batch_size, rng):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = loss_of(batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            epoch_losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(epoch_losses[-20:]):.4f}")
            if step >= total:
                break
        losses.append(float(np.mean(epoch_losses)))
    bar.close()
    use_fast_dropout(model, False)  # export and saving see the modules load_encoder built
    model.eval()
    return losses


def _pair_batch(
    examples: list[TaggerExample], batch: list[int]
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The batch's gold candidate pairs: their row, positions and types, and their labels."""
    parts = [(row, examples[i].pairs, examples[i].pair_labels) for row, i in enumerate(batch)]
    parts = [(row, ix, y) for row, ix, y in parts if ix is not None and y is not None and len(y)]
    if not parts:
        return torch.zeros(0, dtype=torch.int64), {}, torch.zeros(0)
    arrays = [ix.arrays() for _, ix, _ in parts]
    rows = np.concatenate([np.full(len(y), row, np.int64) for row, _, y in parts])
    index = {k: torch.from_numpy(np.concatenate([a[k] for a in arrays])) for k in arrays[0]}
    labels = np.concatenate([y for _, _, y in parts]).astype(np.float32)
    return torch.from_numpy(rows), index, torch.from_numpy(labels)


def train_tagger(
    examples: list[TaggerExample], encoder_src: str, cfg: TrainConfig, pad: int, steps: int
) -> tuple[JointTagger, list[float]]:
    with_pairs = cfg.relation_head == "span_pair"
    model = JointTagger(
        load_encoder(encoder_src),
        len(F.ENTITY_TAGS),
        len(F.MODIFIER_TAGS),
        pair_head=with_pairs,
        pair_context=cfg.pair_context,
    )
    ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    bce = torch.nn.BCEWithLogitsLoss()

    def loss_of(batch: list[int]) -> torch.Tensor:
        ids, mask = F.pad_batch([examples[i].ids for i in batch], pad)
        width = ids.shape[1]
        ent = torch.tensor([examples[i].entity_tags + [IGNORE] * (width - len(examples[i].ids)) for i in batch])
        mod = torch.tensor([examples[i].modifier_tags + [IGNORE] * (width - len(examples[i].ids)) for i in batch])
        ent_logits, mod_logits, _, states = model(torch.from_numpy(ids), torch.from_numpy(mask))
        loss = ce(ent_logits.flatten(0, 1).float(), ent.flatten()) + ce(mod_logits.flatten(0, 1).float(), mod.flatten())
        if model.pair_head is not None:
            rows, index, labels = _pair_batch(examples, batch)
            if len(labels):
                logits = model.pair_head(states, rows, index).float()
                loss = loss + cfg.pair_loss_weight * bce(logits, labels)
        return loss

    lengths = [len(e.ids) for e in examples]
    desc = "train tagger + relations" if with_pairs else "train tagger"
    losses = _fit(model, lengths, loss_of, steps, cfg.batch_size, cfg, desc)
    return model, losses


def train_relation(
    examples: list[RelationExample], encoder_src: str, cfg: TrainConfig, pad: int, steps: int
) -> tuple[RelationClassifier, list[float]]:
    model = RelationClassifier(load_encoder(encoder_src))
    ce = torch.nn.CrossEntropyLoss()

    def loss_of(batch: list[int]) -> torch.Tensor:
        ids, mask = F.pad_batch([examples[i].ids for i in batch], pad)
        e_pos = torch.tensor([examples[i].entity_pos for i in batch])
        pair_batch = torch.tensor([row for row, i in enumerate(batch) for _ in examples[i].labels])
        m_pos = torch.tensor([p for i in batch for p in examples[i].modifier_pos])
        labels = torch.tensor([y for i in batch for y in examples[i].labels])
        logits = model(torch.from_numpy(ids), torch.from_numpy(mask), e_pos, pair_batch, m_pos)
        return ce(logits.float(), labels)

    lengths = [len(e.ids) for e in examples]
    losses = _fit(model, lengths, loss_of, steps, cfg.relation_batch_size, cfg, "train relations")
    return model, losses


def _tokenizer_from(encoder_src: str) -> F.Tokenizer:
    """The encoder's fast tokenizer (works for checkpoints that ship only vocab.txt, too)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(encoder_src)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"encoder {encoder_src!r} has no fast tokenizer; a BERT-family checkpoint is required")
    tok = F.Tokenizer.from_str(backend.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


@dataclass
class _Split:
    """The notes read for training, their content hash, and the train/dev split of them."""

    docs: list[Document]
    train: list[Document]
    dev: list[Document]
    data_hash: str


@dataclass
class _TrainedModels:
    """The trained models and the counts the model card reports about their training."""

    tagger: JointTagger
    relation: RelationClassifier | None  # None: relations come from the tagger's span-pair head
    tagger_windows: int
    overlapping_spans_dropped: int
    relation_inputs: int
    relation_candidates: int
    relation_positive: int
    relation_candidates_too_far_apart: int
    tagger_losses: list[float]
    relation_losses: list[float]
    tagger_steps: int

    def card_section(self, seconds: float) -> dict[str, object]:
        """The model card's `training` section."""
        return {
            "relation_head": "markers" if self.relation is not None else "span_pair",
            "tagger_windows": self.tagger_windows,
            "overlapping_spans_dropped": self.overlapping_spans_dropped,
            "relation_inputs": self.relation_inputs,
            "relation_candidates": self.relation_candidates,
            "relation_positive": self.relation_positive,
            "relation_candidates_too_far_apart": self.relation_candidates_too_far_apart,
            "tagger_steps": self.tagger_steps,
            "tagger_epoch_loss": [round(x, 4) for x in self.tagger_losses],
            "relation_epoch_loss": [round(x, 4) for x in self.relation_losses],
            "seconds": round(seconds, 1),
            "torch": torch.__version__,
        }


def _seed_and_threads(cfg: TrainConfig) -> None:
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def _read_split(cfg: TrainConfig) -> _Split:
    """Read the corpus (its first `max_notes`) and split it by `cfg.split`."""
    docs = read_corpus(cfg.data_dir)
    if cfg.max_notes:
        docs = docs[: cfg.max_notes]
    data_hash = corpus_hash(docs)
    if cfg.split == "all":
        train_docs, dev_docs = list(docs), []
    else:
        train_docs, dev_docs = _train_dev(docs, cfg)
    return _Split(docs=docs, train=train_docs, dev=dev_docs, data_hash=data_hash)


def _train_dev(docs: Sequence[Document], cfg: TrainConfig) -> tuple[list[Document], list[Document]]:
    """The train/dev split of `docs` (`dev_size` notes held out, by `seed`)."""
    if cfg.dev_size >= len(docs):
        raise ValueError(f"dev_size {cfg.dev_size} leaves no training notes out of {len(docs)}")
    return split_corpus(docs, cfg.dev_size, cfg.seed)


def _step_docs(cfg: TrainConfig, split: _Split) -> list[Document] | None:
    """The train split's notes when a `split: all` model takes its held-out model's step count."""
    if cfg.split != "all" or not cfg.steps_of_train_split:
        return None
    return _train_dev(split.docs, cfg)[0]


def _train_models(
    cfg: TrainConfig,
    encoder_src: str,
    train_docs: Sequence[Document],
    staging: Path,
    step_docs: Sequence[Document] | None = None,
) -> _TrainedModels:
    """Save the tokenizer into `staging`, then train the tagger (with its span-pair relation head)
    or, with `relation_head="markers"`, the tagger and the relation classifier. `step_docs`: the
    notes whose examples an epoch counts (steps_of_train_split), default `train_docs`."""
    tok = _tokenizer_from(encoder_src)
    special = F.SpecialIds.of(tok)
    tok.save(str(staging / "tokenizer.json"))
    tag_ex, collisions, pair_counts = tagger_examples(train_docs, tok, cfg, special)
    tag_epoch = len(tag_ex) if step_docs is None else len(tagger_examples(step_docs, tok, cfg, special)[0])
    if step_docs is not None:
        log.info("tagger: an epoch counts the %d windows of the train split's %d notes", tag_epoch, len(step_docs))
    tagger_steps = _total_steps(tag_epoch, cfg.tagger_epochs, cfg.batch_size, cfg)
    log.info(
        "tagger: %d windows from %d notes (%d overlapping spans dropped)", len(tag_ex), len(train_docs), collisions
    )
    if cfg.relation_head == "span_pair":
        windows = sum(1 for e in tag_ex if e.pair_labels is not None and len(e.pair_labels))
        log.info(
            "relations (span-pair head): %d candidate pairs, %d positive, %d in no window",
            pair_counts.candidates,
            pair_counts.positive,
            pair_counts.outside,
        )
        tagger, tagger_losses = train_tagger(tag_ex, encoder_src, cfg, special.pad, tagger_steps)
        return _TrainedModels(
            tagger=tagger,
            relation=None,
            tagger_windows=len(tag_ex),
            overlapping_spans_dropped=collisions,
            relation_inputs=windows,
            relation_candidates=pair_counts.candidates,
            relation_positive=pair_counts.positive,
            relation_candidates_too_far_apart=pair_counts.outside,
            tagger_losses=tagger_losses,
            relation_losses=[],
            tagger_steps=tagger_steps,
        )
    tagger, tagger_losses = train_tagger(tag_ex, encoder_src, cfg, special.pad, tagger_steps)
    rel_ex, rel_skipped = relation_examples(train_docs, tok, cfg, special)
    rel_epoch = len(rel_ex) if step_docs is None else len(relation_examples(step_docs, tok, cfg, special)[0])
    n_pairs = sum(len(e.labels) for e in rel_ex)
    n_pos = sum(sum(e.labels) for e in rel_ex)
    log.info(
        "relations: %d inputs, %d candidate pairs (%d positive, %d too far apart)",
        len(rel_ex),
        n_pairs,
        n_pos,
        rel_skipped,
    )
    relation_steps = _total_steps(rel_epoch, cfg.relation_epochs, cfg.relation_batch_size, cfg)
    relation, relation_losses = train_relation(rel_ex, encoder_src, cfg, special.pad, relation_steps)
    return _TrainedModels(
        tagger=tagger,
        relation=relation,
        tagger_windows=len(tag_ex),
        overlapping_spans_dropped=collisions,
        relation_inputs=len(rel_ex),
        relation_candidates=n_pairs,
        relation_positive=n_pos,
        relation_candidates_too_far_apart=rel_skipped,
        tagger_losses=tagger_losses,
        relation_losses=relation_losses,
        tagger_steps=tagger_steps,
    )


def _manifest(cfg: TrainConfig, data_hash: str, hidden: int) -> ModelManifest:
    return ModelManifest(
        name=cfg.name,
        version=cfg.version(data_hash),
        encoder=cfg.encoder or "embedded:all-MiniLM-L6-v2",
        entity_tags=list(F.ENTITY_TAGS),
        modifier_tags=list(F.MODIFIER_TAGS),
        window_tokens=cfg.window_tokens,
        window_stride=cfg.window_stride,
        relation_max_tokens=cfg.relation_max_tokens,
        relation_context_chars=cfg.relation_context_chars,
        relation_head=cfg.relation_head,
        relation_threshold=cfg.relation_threshold,
        hidden_size=hidden,
        quantization=QUANT_RECIPE,
        energy_outputs=True,
        graph_attention=GRAPH_ATTENTION,
    )


def _calibration_summary(
    cfg: TrainConfig, staging: Path, dev_docs: Sequence[Document], model_tag: str, data_hash: str
) -> tuple[dict[str, object], dict[str, object] | None]:
    """Calibrate the model in `staging`; returns the card's calibration section and, for a model
    trained on every note, its `recipe` section (None otherwise).

    With dev notes (never trained on): fitted on them; results then report calibrated confidences,
    and the dev scores are unchanged (calibration never changes a decision). Without (`split=all`):
    the committed measurement of the same recipe on the train split, when it is this model's
    recipe and data (deployments/fast_tier/recipe.py); else uncalibrated, and the card says why."""
    from deployments.fast_tier.recipe import load_recipe
    from deployments.fast_tier.training.calibrate import calibrate_model, card_summary, transfer_calibration

    if dev_docs:
        cal = calibrate_model(staging, dev_docs, f"dev split of {cfg.data_dir}", update_card=False)
        return card_summary(cal), None
    recipe = load_recipe()
    why = (
        "no measured recipe (deployments/fast_tier/default_recipe.json)"
        if recipe is None
        else recipe.mismatch(cfg, data_hash)
    )
    if recipe is not None and why is None:
        return transfer_calibration(recipe, staging, model_tag), recipe.card_section()
    log.warning("split=all: the model stays uncalibrated (%s)", why)
    return card_summary(
        None,
        f"split=all leaves no dev notes, and {why}; fit one on held-out notes with "
        "python -m deployments.fast_tier.training.calibrate --model DIR --data DIR --notes all",
    ), None


def _model_card(
    cfg: TrainConfig, manifest: ModelManifest, split: _Split, models: _TrainedModels, train_seconds: float
) -> dict[str, object]:
    """The model card, less the calibration and the dev scores."""
    return {
        "model": manifest.tag,
        "encoder": manifest.encoder,
        "data": {
            "dir": str(cfg.data_dir),
            "hash": split.data_hash,
            "notes": len(split.docs),
            "split": cfg.split,
            "split_rule": f"sorted by name, shuffled with random.Random({cfg.seed}), first {cfg.dev_size} are dev",
            "train_notes": [d.name for d in split.train],
            "dev_notes": [d.name for d in split.dev],
            "reader_issues": _sum_issues(split.docs),
        },
        "hyper_parameters": cfg.model_dump(mode="json", exclude={"data_dir", "output_dir"}),
        # the tag names the settings, not the machine: `bf16: auto` trains under bf16 autocast only
        # where the CPU has native bf16, so the card says which numerics this build had
        "training": models.card_section(train_seconds) | {"bf16_autocast": uses_bf16(cfg, warn=False)},
    }


def train(cfg: TrainConfig) -> Path:
    """Train, export and evaluate a fast tier into `cfg.output_dir`; returns that directory."""
    from deployments.fast_tier.training.export import export_relation, export_tagger, write_pair_head

    t0 = time.perf_counter()
    _seed_and_threads(cfg)
    encoder_src = cfg.encoder or str(embedded_encoder_dir())
    split = _read_split(cfg)

    out = cfg.output_dir
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    models = _train_models(cfg, encoder_src, split.train, staging, _step_docs(cfg, split))
    manifest = _manifest(cfg, split.data_hash, models.tagger.encoder.config.hidden_size)
    (staging / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
    if cfg.keep_pytorch:
        save_module(models.tagger, staging / "pytorch" / "tagger")
        if models.relation is not None:
            save_module(models.relation, staging / "pytorch" / "relation")
    bar = tqdm(total=2 if models.relation is not None else 1, desc="export ONNX fp32 + int8", unit="model")
    export_tagger(models.tagger, staging, keep_fp32=cfg.export_fp32)
    write_pair_head(models.tagger, staging)
    bar.update(1)
    if models.relation is not None:
        export_relation(models.relation, staging, keep_fp32=cfg.export_fp32)
        bar.update(1)
    bar.close()
    fit_ood(staging, split.train)
    train_seconds = time.perf_counter() - t0
    calibration, recipe = _calibration_summary(cfg, staging, split.dev, manifest.tag, split.data_hash)
    card = _model_card(cfg, manifest, split, models, train_seconds)
    card["confidence_calibration"] = calibration
    if recipe is not None:
        card["recipe"] = recipe
    if split.dev:
        score_card(card, staging, split.dev)
    (staging / CARD_NAME).write_text(json.dumps(card, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def _sum_issues(docs: Sequence[Document]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in docs:
        for k, v in d.issues.items():
            total[k] = total.get(k, 0) + v
    return total


def fit_ood(model_dir: Path, train_docs: Sequence[Document]) -> OODStats:
    """Fit the router's out-of-distribution statistics on the training notes' pooled embeddings
    (int8, as served) and store them with the model."""
    from deployments.fast_tier.config import EngineConfig
    from deployments.fast_tier.engine import FastTierEngine

    # Embeddings do not depend on confidences: no calibration (it may not exist yet, either).
    engine = FastTierEngine(EngineConfig(model_dir=model_dir, calibrate=False))
    analyses = engine.analyze([(d.name, d.text) for d in train_docs], progress=True, relations=False)
    stats = OODStats.fit(np.stack([a.embedding for a in analyses]))
    stats.save(model_dir / OOD_FILE)
    return stats


def score_card(card: dict[str, object], model_dir: Path, dev_docs: Sequence[Document]) -> None:
    """Put the model's int8 dev scores in its `card`, with the span floor they were measured at
    (the engine's default: a card measured at another floor is scored again on first use,
    default.upgrade_model)."""
    card["dev_scores_int8"] = evaluate_dir(model_dir, dev_docs, "int8")
    card["dev_scores_span_floor"] = SpanFloor().model_dump()


def evaluate_dir(model_dir: Path, docs: Sequence[Document], precision: str) -> dict[str, object]:
    """Score a model directory's ONNX variant on gold documents (the serving code path)."""
    from clinie.brat import document_from_result
    from clinie.scoring import score_documents
    from deployments.fast_tier.config import EngineConfig
    from deployments.fast_tier.engine import FastTierEngine

    engine = FastTierEngine(EngineConfig(model_dir=model_dir, precision=precision))  # type: ignore[arg-type]
    results = engine.extract([(d.name, d.text) for d in docs], progress=True)
    preds = {d.name: document_from_result(d.name, d.text, r) for d, r in zip(docs, results, strict=True)}
    return score_documents(docs, preds).as_dict()
