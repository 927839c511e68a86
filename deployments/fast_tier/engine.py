"""The fast tier's inference engine: ONNX Runtime + a `tokenizers` tokenizer, no torch.

`FastTierEngine.extract` is what `clinie extract`, the evaluation and the Ray Serve deployment call.
It batches windows across notes (sorted by length, so padding stays small), stitches each note's
window predictions back with exact offsets, decodes spans, classifies the allowed candidate pairs
and assembles contract-shaped results. Relations come from the tagger's own pass (the span-pair
head over its token states, pairs.py) or, for a model trained with `relation_head="markers"`, from
a second encoder over marked sentences.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from clinie.analysis import DecodedSpan, NoteAnalysis, analysis_to_result
from clinie.calibration import CALIBRATION_FILE, ConfidenceCalibration, Kind
from clinie.schema import NoteError, NoteResult, Route
from clinie.validation import partition_notes
from clinie.windows import split_sentences
from deployments.fast_tier import features as F
from deployments.fast_tier.config import MANIFEST_NAME, RELATION_FILES, TAGGER_FILES, EngineConfig, ModelManifest
from deployments.fast_tier.pairs import PAIR_HEAD_FILE, PairHead, pair_index

log = logging.getLogger(__name__)


# entity probs, modifier probs, pooled embedding, entity logit lse, modifier logit lse (or None),
# token states (a tagger with the span-pair relation head; else None)
TaggerOutput = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]


class TaggerBackend(Protocol):
    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> TaggerOutput: ...


class RelationBackend(Protocol):
    def __call__(
        self, ids: np.ndarray, mask: np.ndarray, e_pos: np.ndarray, pair_batch: np.ndarray, m_pos: np.ndarray
    ) -> np.ndarray: ...


def onnx_backends(cfg: EngineConfig, relation: bool = True) -> tuple[TaggerBackend, RelationBackend | None]:
    """ONNX Runtime sessions for the configured precision and providers (`relation=False`: the
    tagger's only, for a model whose relations come from its span-pair head)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if cfg.intra_op_threads:
        opts.intra_op_num_threads = cfg.intra_op_threads
    available = set(ort.get_available_providers())
    providers = [p for p in cfg.providers if p in available] or ["CPUExecutionProvider"]
    paths = [cfg.model_dir / TAGGER_FILES[cfg.precision]]
    if relation:
        paths.append(cfg.model_dir / RELATION_FILES[cfg.precision])
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"missing ONNX file {p}; was the model exported with this precision?")
    tagger = ort.InferenceSession(str(paths[0]), opts, providers=providers)
    names = [o.name for o in tagger.get_outputs()]

    def run_tagger(ids: np.ndarray, mask: np.ndarray) -> TaggerOutput:
        out = dict(zip(names, tagger.run(None, {"input_ids": ids, "attention_mask": mask}), strict=True))
        return (
            out["entity_probs"],
            out["modifier_probs"],
            out["pooled"],
            out.get("entity_lse"),
            out.get("modifier_lse"),
            out.get("hidden"),
        )

    if not relation:
        return run_tagger, None
    session = ort.InferenceSession(str(paths[1]), opts, providers=providers)

    def run_relation(
        ids: np.ndarray, mask: np.ndarray, e_pos: np.ndarray, pair_batch: np.ndarray, m_pos: np.ndarray
    ) -> np.ndarray:
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "entity_pos": e_pos,
            "pair_batch": pair_batch,
            "modifier_pos": m_pos,
        }
        return session.run(None, feeds)[0]

    return run_tagger, run_relation


@functools.cache
def _blas_controller() -> Any:
    """The process's ThreadpoolController, made once (it inspects the loaded libraries)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread for the engine's own small matrix work (the span-pair head,
    decoding). Multi-threaded BLAS there competes for the cores with ONNX Runtime's thread pool,
    whose threads spin between runs: measured on 2 cores, int8 extraction went from 8.6 to 13.6
    notes/s with BLAS on one thread (benchmarks/fast_tier.py). Other users of BLAS in the process
    get their setting back on exit; torch and ONNX Runtime keep their own pools."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def fast_route(reason: str = "policy:fast-only") -> Route:
    """The route of a result the fast tier answered alone, outside the router (`extract`, the
    benchmarks). Routing signals are the router's alone (`router.compute_signals`); the
    orchestration puts them into `route.signals` of every routed answer."""
    return Route(tier="bert", escalated=False, reason=reason, signals={})


@dataclass
class _TagOutputs:
    """The tagger's per-token outputs of each note of a batch, stitched from its windows."""

    ent_probs: list[np.ndarray]
    mod_probs: list[np.ndarray]
    ent_lse: list[np.ndarray] | None
    mod_lse: list[np.ndarray] | None
    emb_sum: list[np.ndarray]
    emb_weight: list[float]
    states: list[np.ndarray] | None  # token states, for the span-pair relation head

    @classmethod
    def empty(cls, encoded: list[F.EncodedNote], n_ent: int, n_mod: int, hidden: int, states: bool) -> _TagOutputs:
        return cls(
            ent_probs=[np.zeros((len(e.ids), n_ent), np.float32) for e in encoded],
            mod_probs=[np.zeros((len(e.ids), n_mod), np.float32) for e in encoded],
            ent_lse=[np.zeros(len(e.ids), np.float32) for e in encoded],
            mod_lse=[np.zeros(len(e.ids), np.float32) for e in encoded],
            emb_sum=[np.zeros(hidden, np.float32) for _ in encoded],
            emb_weight=[0.0 for _ in encoded],
            states=[np.zeros((len(e.ids), hidden), np.float32) for e in encoded] if states else None,
        )


class FastTierEngine:
    """Runs a trained fast tier on notes."""

    def __init__(
        self,
        cfg: EngineConfig,
        backends: tuple[TaggerBackend, RelationBackend | None] | None = None,
    ):
        manifest_path = Path(cfg.model_dir) / MANIFEST_NAME
        if not manifest_path.exists():
            raise FileNotFoundError(f"no fast-tier model at {cfg.model_dir} ({MANIFEST_NAME} missing)")
        self.cfg = cfg
        self.manifest = ModelManifest.model_validate_json(manifest_path.read_text())
        self.tokenizer = F.load_tokenizer(str(cfg.model_dir / "tokenizer.json"))
        self.special = F.SpecialIds.of(self.tokenizer)
        self.pair_head = (
            PairHead.load(cfg.model_dir / PAIR_HEAD_FILE) if self.manifest.relation_head == "span_pair" else None
        )
        self.run_tagger, self.run_relation = backends or onnx_backends(cfg, relation=self.pair_head is None)
        # A bad calibration file stops the engine here (CalibrationError names the file and field);
        # a missing one means raw scores, said once in the log and in `calibration_status`.
        self.calibration = (
            ConfidenceCalibration.for_model(cfg.model_dir, self.manifest.tag) if self._wants_calibration else None
        )
        if self.calibration is not None:
            log.info("fast tier %s: confidences calibrated (%s)", self.manifest.tag, self.calibration_status)
        elif self._wants_calibration:
            log.warning("fast tier %s: %s", self.manifest.tag, self.calibration_status)

    @property
    def _wants_calibration(self) -> bool:
        # getattr: a process that loaded an EngineConfig class from before this field existed
        # (a long build importing this module later) still works, with the default.
        return bool(getattr(self.cfg, "calibrate", True))

    @property
    def calibration_status(self) -> str:
        """One line for logs and info endpoints: whether confidences are calibrated, and on what."""
        if self.calibration is not None:
            rep = self.calibration.fitted_on
            held = ", ".join(f"{k} {v.before:.3f}->{v.after:.3f}" for k, v in rep.held_out.items())
            return f"calibrated: {self.calibration.method} on {len(rep.notes)} notes; held-out ECE {held}"
        if not self._wants_calibration:
            return "uncalibrated: calibration switched off (EngineConfig.calibrate=false); raw scores"
        return (
            f"uncalibrated: no {CALIBRATION_FILE} in the model directory; confidences are raw "
            "(overconfident) scores. Fit one: python -m deployments.fast_tier.training.calibrate --model DIR"
        )

    @property
    def model_tag(self) -> str:
        suffix = "" if self.cfg.precision == "int8" else f"+{self.cfg.precision}"
        return self.manifest.tag + suffix

    # -- public API -------------------------------------------------------------------------

    def extract(
        self,
        notes: Sequence[tuple[str | None, object]],
        progress: bool = False,
        route: Callable[[NoteAnalysis], Route] | None = None,
    ) -> list[NoteResult | NoteError]:
        """Results in input order; a bad note gets a NoteError in its slot, the others still run."""
        slots, valid = partition_notes(notes, self.cfg.max_note_chars)
        analyses = self.analyze([(nid, text) for _, nid, text in valid], progress=progress)
        for (i, _, _), analysis in zip(valid, analyses, strict=True):
            slots[i] = self.to_result(analysis, route(analysis) if route else None)
        return [s for s in slots if s is not None]

    def analyze(
        self, notes: Sequence[tuple[str | None, str]], progress: bool = False, relations: bool = True
    ) -> list[NoteAnalysis]:
        """One fast-tier pass over validated notes (`relations=False`: tagger only)."""
        if not notes:
            return []
        with _one_blas_thread():
            return self._analyze(notes, progress, relations)

    def _analyze(self, notes: Sequence[tuple[str | None, str]], progress: bool, relations: bool) -> list[NoteAnalysis]:
        t0 = time.perf_counter()
        m = self.manifest
        encoded = [F.encode_note(self.tokenizer, text, m.window_tokens, m.window_stride) for _, text in notes]
        tags = self._tag_windows(encoded, progress, states=relations and self.pair_head is not None)
        pairs = enumerate(zip(notes, encoded, strict=True))
        analyses = [self._analysis(nid, text, enc, tags, n) for n, ((nid, text), enc) in pairs]
        if self.calibration is not None:
            floor = self.cfg.span_floor
            for a in analyses:
                self._calibrate_spans(a.entities, "entity")
                self._calibrate_spans(a.modifiers, "modifier")
                a.calibrated = True
                # before relations: a span not reported takes no pair with it (config.SpanFloor)
                a.entities = [s for s in a.entities if s.confidence >= floor.entity]
                a.modifiers = [s for s in a.modifiers if s.confidence >= floor.modifier]
        if relations and tags.states is not None:
            self._span_pair_relations(analyses, tags.states)
        elif relations:
            self._relations(analyses, progress)
        elapsed = (time.perf_counter() - t0) * 1000
        total_tokens = sum(max(1, len(e.ids)) for e in encoded)
        for a, enc in zip(analyses, encoded, strict=True):
            a.elapsed_ms = elapsed * max(1, len(enc.ids)) / total_tokens  # batch time, shared by size
        return analyses

    def _tag_windows(self, encoded: list[F.EncodedNote], progress: bool, states: bool = False) -> _TagOutputs:
        """The tagger over every window of every note, each note's windows batched together and
        never with another note's (sorted by length, so padding stays small); each window's own
        tokens written back to its note (`states`: their token states too, for the span-pair
        relation head).

        Never across notes: the int8 graph quantizes its activations with one scale per batch
        (ONNX Runtime's dynamic quantization), so a window batched with other notes' windows gets
        tags that depend on them — in serving, on whatever else arrived in the same few
        milliseconds. On the 20 dev notes, all 20 got different spans alone and batched together;
        batched per note, a note's answer is the same however it is sent (tests hold it)."""
        m = self.manifest
        out = _TagOutputs.empty(encoded, len(m.entity_tags), len(m.modifier_tags), m.hidden_size, states)
        size = self.cfg.batch_size
        batches: list[list[tuple[int, int]]] = []
        for n, enc in enumerate(encoded):
            order = sorted(range(len(enc.windows)), key=lambda w: enc.windows[w].end - enc.windows[w].start)
            batches += [[(n, w) for w in order[b : b + size]] for b in range(0, len(order), size)]
        bar = tqdm(total=sum(map(len, batches)), desc="tag windows", unit="win", disable=not progress)
        for batch in batches:
            seqs = [F.window_inputs(encoded[n], encoded[n].windows[w], self.special) for n, w in batch]
            ids, mask = F.pad_batch(seqs, self.special.pad)
            ent, mod, pooled, e_lse, m_lse, hidden = self.run_tagger(ids, mask)
            if e_lse is None or m_lse is None:
                out.ent_lse = out.mod_lse = None  # a model exported before the energy signal
            for row, (n, w) in enumerate(batch):
                win = encoded[n].windows[w]
                own = slice(win.own_start, win.own_end)
                lo, hi = win.own_start - win.start + 1, win.own_end - win.start + 1
                out.ent_probs[n][own] = ent[row, lo:hi]
                out.mod_probs[n][own] = mod[row, lo:hi]
                if out.ent_lse is not None and out.mod_lse is not None and e_lse is not None and m_lse is not None:
                    out.ent_lse[n][own] = e_lse[row, lo:hi]
                    out.mod_lse[n][own] = m_lse[row, lo:hi]
                if out.states is not None and hidden is not None:
                    out.states[n][own] = hidden[row, lo:hi]
                width = win.end - win.start
                out.emb_sum[n] += pooled[row] * width
                out.emb_weight[n] += width
            bar.update(len(batch))
        bar.close()
        return out

    def _analysis(self, note_id: str | None, text: str, enc: F.EncodedNote, tags: _TagOutputs, n: int) -> NoteAnalysis:
        """Note `n`'s decoded spans and evidence (relations come after, from `_relations`)."""
        m = self.manifest
        return NoteAnalysis(
            note_id=note_id,
            text=text,
            sentences=split_sentences(text),
            entities=F.decode_spans(tags.ent_probs[n], enc.offsets, m.entity_tags, enc.words),
            modifiers=F.decode_spans(tags.mod_probs[n], enc.offsets, m.modifier_tags, enc.words),
            relations=[],
            token_offsets=enc.offsets,
            entity_probs=tags.ent_probs[n],
            modifier_probs=tags.mod_probs[n],
            embedding=tags.emb_sum[n] / max(tags.emb_weight[n], 1.0),
            entity_lse=tags.ent_lse[n] if tags.ent_lse is not None else None,
            modifier_lse=tags.mod_lse[n] if tags.mod_lse is not None else None,
            model_tag=self.model_tag,
        )

    def to_result(self, a: NoteAnalysis, route: Route | None = None) -> NoteResult:
        """Contract-shaped result with ids T1.. (entities first, then modifiers, each by offset)."""
        return analysis_to_result(a, route or fast_route())

    # -- calibration ------------------------------------------------------------------------

    def _calibrate_spans(self, spans: list[DecodedSpan], kind: Kind) -> None:
        if not spans or self.calibration is None:
            return
        raw = [s.confidence for s in spans]
        for s, r, c in zip(spans, raw, self.calibration.apply(kind, raw).tolist(), strict=True):
            s.raw_confidence = r
            s.confidence = c

    # -- relations --------------------------------------------------------------------------

    def _span_pair_relations(self, analyses: list[NoteAnalysis], states: list[np.ndarray]) -> None:
        """Every allowed candidate pair of each note scored by the span-pair head from the note's
        token states (stitched from its windows): no second encoder pass."""
        assert self.pair_head is not None
        threshold = self.manifest.relation_threshold
        for a, note_states in zip(analyses, states, strict=True):
            ents = [(s.label, s.start, s.end) for s in a.entities]
            mods = [(s.label, s.start, s.end) for s in a.modifiers]
            cands = F.candidate_pairs(ents, mods, a.sentences)
            if not cands:
                continue
            probs = self.pair_head.probs(note_states, pair_index(a.token_offsets, ents, mods, cands)).tolist()
            a.pair_probs = sorted((c.entity, c.modifier, p) for c, p in zip(cands, probs, strict=True))
            a.relations = [(e, mi, p) for e, mi, p in a.pair_probs if p >= threshold]
        self._finish_relations(analyses)

    def _relations(self, analyses: list[NoteAnalysis], progress: bool) -> None:
        """The `markers` path: a second encoder over each entity's marked sentence."""
        assert self.run_relation is not None
        m = self.manifest
        jobs: list[tuple[int, F.GroupInput]] = []
        for n, a in enumerate(analyses):
            groups, _ = F.group_inputs(
                self.tokenizer,
                self.special,
                a.text,
                a.sentences,
                [(s.label, s.start, s.end) for s in a.entities],
                [(s.label, s.start, s.end) for s in a.modifiers],
                m.relation_context_chars,
                m.relation_max_tokens,
            )
            jobs += [(n, g) for g in groups]
        jobs.sort(key=lambda j: len(j[1].ids))
        bar = tqdm(total=len(jobs), desc="classify pairs", unit="input", disable=not progress)
        for b in range(0, len(jobs), self.cfg.batch_size):
            batch = jobs[b : b + self.cfg.batch_size]
            ids, mask = F.pad_batch([g.ids for _, g in batch], self.special.pad)
            e_pos = np.array([g.entity_pos for _, g in batch], dtype=np.int64)
            pair_batch = np.array([row for row, (_, g) in enumerate(batch) for _ in g.modifiers], dtype=np.int64)
            m_pos = np.array([p for _, g in batch for p in g.modifier_pos], dtype=np.int64)
            probs = iter(self.run_relation(ids, mask, e_pos, pair_batch, m_pos).tolist())
            for n, g in batch:
                for mi in g.modifiers:
                    p = next(probs)
                    analyses[n].pair_probs.append((g.entity, mi, p))
                    if p >= m.relation_threshold:
                        analyses[n].relations.append((g.entity, mi, p))
            bar.update(len(batch))
        bar.close()
        self._finish_relations(analyses)

    def _finish_relations(self, analyses: list[NoteAnalysis]) -> None:
        for a in analyses:
            a.relations.sort()
            a.pair_probs.sort()
            if self.calibration is not None and a.relations:
                # Only the reported confidence changes: which pairs are related was decided on the
                # raw probability above, so calibration never adds or drops a relation.
                conf = self.calibration.apply("relation", [p for _, _, p in a.relations]).tolist()
                a.relations = [(e, mi, c) for (e, mi, _), c in zip(a.relations, conf, strict=True)]
