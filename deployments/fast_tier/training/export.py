"""Export to ONNX (fp32) and a dynamic int8 variant.

`torch.onnx.export(..., dynamo=False)` (the TorchScript exporter, no onnxscript needed) with
dynamic batch and sequence axes, then `onnxruntime.quantization.quantize_dynamic`. Fusing with
optimum's ORTOptimizer first breaks shape inference for the quantizer, and optimum pins an older
transformers, so neither is used; `DefaultTensorType=FLOAT` lets the quantizer type tensors whose
shape inference gives up.

Both encoders are exported with eager attention (`GRAPH_ATTENTION`): PyTorch's
scaled-dot-product attention, the training default, exports with a `Where`/`IsNaN` guard per
layer for fully masked rows, 5-12% of the int8 graph's time here (benchmarks/onnx_graph.py); the eager form is
a plain masked softmax. Same outputs on every unpadded token (padded positions are never read).
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.fast_tier.config import (
    GRAPH_ATTENTION,
    MANIFEST_NAME,
    QUANT_RECIPE,
    RELATION_FILES,
    TAGGER_FILES,
    ModelManifest,
)
from deployments.fast_tier.pairs import PAIR_HEAD_FILE
from deployments.fast_tier.training.modeling import (
    JointTagger,
    RelationClassifier,
    RelationForExport,
    TaggerForExport,
    load_relation,
    load_tagger,
)

OPSET = 17
# The tagger graph's outputs; `*_lse` (log-sum-exp of logits) arrived with the router's energy
# signal, so models exported before it have only the first three (the engine accepts both).
# A tagger with the span-pair relation head also outputs its token states (`hidden`).
TAGGER_OUTPUTS = ["entity_probs", "modifier_probs", "pooled", "entity_lse", "modifier_lse"]


@contextmanager
def _graph_attention(encoder: torch.nn.Module) -> Iterator[None]:
    """The encoder's attention as the graph should have it, only while it is exported (a module
    that goes on training or serving in PyTorch keeps its own)."""
    before = encoder.config._attn_implementation  # type: ignore[union-attr]
    encoder.set_attn_implementation(GRAPH_ATTENTION)  # type: ignore[operator]
    try:
        yield
    finally:
        encoder.set_attn_implementation(before)  # type: ignore[operator]


def _export(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
) -> None:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python-side shape checks
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


class QuantOptions(BaseModel):
    """How `quantize` makes an int8 graph. The defaults are the shipped recipe (`QUANT_RECIPE`);
    the others are for `benchmarks.quantization`, which measures them against it on a machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight_type: Literal["int8", "uint8"] = Field(
        default="int8",
        description="Weight integer type. int8 weights run ONNX Runtime's u8s8 kernels (VNNI where the CPU "
        "has it; on AVX2 alone, an instruction whose 16-bit sums can saturate); uint8 runs u8u8, which cannot.",
    )
    per_channel: bool = Field(default=True, description="One weight scale per output channel (else per tensor).")
    reduce_range: bool = Field(
        default=True,
        description="7-bit weights: the AVX2 u8s8 kernel's sums cannot saturate, at half the weight resolution.",
    )
    fp32_nodes: tuple[str, ...] = Field(
        default=("/layer.0/",),
        description="MatMul nodes whose name contains any of these stay fp32 (default: the encoder's first layer).",
    )

    @field_validator("fp32_nodes")
    @classmethod
    def _no_empty_pattern(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not p for p in v):
            raise ValueError("an empty pattern would keep every MatMul in fp32")
        return v


def quantize(src: Path, dst: Path, options: QuantOptions | None = None) -> None:
    """Dynamic int8 weights (MatMul/Gemm), per output channel, in 7 bits; activations quantized at
    run time; the encoder's first layer stays fp32 (`QuantOptions` defaults).

    7-bit weights: ONNX Runtime runs int8 weights with u8s8 kernels, which on a CPU without VNNI
    (AVX2 alone, e.g. AMD EPYC before Zen 4) add pairs of u8 x s8 products in 16 bits; 8-bit
    weights can overflow that sum, which saturates, and 7-bit weights cannot
    (tests/unit/test_quantize.py holds the recipe to fp32 on a graph where 8-bit weights saturate
    on such a CPU). VNNI kernels sum in 32 bits either way; per-channel scales keep the lost bit
    cheap (README, "How the fast tier works", measures both).

    Per-channel scales cost nothing measurable in speed here and recovered about 1.4 points of
    strict entity F1 that per-tensor scales lost on the dev split. The first transformer layer is
    where int8 lost accuracy (its inputs, the embeddings, have the widest range): all layers in
    int8 cost 0.85 points of strict entity F1 on dev against fp32; the first in fp32, 0.2, for
    about 4% of int8's speed. The classification heads made no difference either way. Fusing
    attention first with onnxruntime.transformers (possible once the encoder is exported with
    eager attention) made int8 slower on this CPU, so the graph is quantized unfused.
    `benchmarks.quantization` measures the alternatives on the machine it runs on.
    """
    opts = options or QuantOptions()
    keep = [
        n.name
        for n in onnx.load(str(src)).graph.node
        if n.op_type == "MatMul" and any(p in n.name for p in opts.fp32_nodes)
    ]
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8 if opts.weight_type == "int8" else QuantType.QUInt8,
        per_channel=opts.per_channel,
        reduce_range=opts.reduce_range,
        nodes_to_exclude=keep,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def export_tagger(model: JointTagger, out_dir: Path, keep_fp32: bool = True) -> None:
    ids = torch.ones((2, 12), dtype=torch.int64)
    mask = torch.ones((2, 12), dtype=torch.int64)
    seq = {0: "batch", 1: "sequence"}
    fp32 = out_dir / TAGGER_FILES["fp32"]
    axes = {
        "input_ids": seq,
        "attention_mask": seq,
        "entity_probs": seq,
        "modifier_probs": seq,
        "pooled": {0: "batch"},
        "entity_lse": seq,
        "modifier_lse": seq,
    }
    outputs = list(TAGGER_OUTPUTS)
    if model.pair_head is not None:
        outputs.append("hidden")
        axes["hidden"] = seq
    with _graph_attention(model.encoder):
        _export(TaggerForExport(model), (ids, mask), fp32, ["input_ids", "attention_mask"], outputs, axes)
    quantize(fp32, out_dir / TAGGER_FILES["int8"])
    if not keep_fp32:
        fp32.unlink()


def write_pair_head(model: JointTagger, out_dir: Path) -> None:
    """The span-pair head's weights for serving (numpy; the head is a few small matrices, cheaper
    run in numpy on the gathered pair rows than as a graph). Nothing for a tagger without one."""
    if model.pair_head is not None:
        model.pair_head.numpy().save(out_dir / PAIR_HEAD_FILE)


def export_relation(model: RelationClassifier, out_dir: Path, keep_fp32: bool = True) -> None:
    ids = torch.ones((2, 12), dtype=torch.int64)
    mask = torch.ones((2, 12), dtype=torch.int64)
    e_pos = torch.tensor([1, 3], dtype=torch.int64)
    pair_batch = torch.tensor([0, 0, 1], dtype=torch.int64)
    m_pos = torch.tensor([4, 6, 8], dtype=torch.int64)
    seq = {0: "batch", 1: "sequence"}
    fp32 = out_dir / RELATION_FILES["fp32"]
    with _graph_attention(model.encoder):
        _export(
            RelationForExport(model),
            (ids, mask, e_pos, pair_batch, m_pos),
            fp32,
            ["input_ids", "attention_mask", "entity_pos", "pair_batch", "modifier_pos"],
            ["related_prob"],
            {
                "input_ids": seq,
                "attention_mask": seq,
                "entity_pos": {0: "batch"},
                "pair_batch": {0: "pairs"},
                "modifier_pos": {0: "pairs"},
                "related_prob": {0: "pairs"},
            },
        )
    quantize(fp32, out_dir / RELATION_FILES["int8"])
    if not keep_fp32:
        fp32.unlink()


def reexport(model_dir: Path) -> None:
    """Rebuild a model directory's ONNX files from its saved PyTorch weights (`pytorch/`).

    The new files are written beside the model first and moved in one by one (`os.replace`, the
    manifest last): a replica that loads the model meanwhile reads whole files, old or new, never
    a half-written one. fp32 graphs are rewritten only where the model has them."""
    manifest = ModelManifest.model_validate_json((model_dir / MANIFEST_NAME).read_text())
    weights = model_dir / "pytorch"
    if not (weights / "tagger").is_dir():
        raise FileNotFoundError(f"no PyTorch weights under {weights}: this model cannot be re-exported")
    staging = model_dir / ".reexport"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        tagger = load_tagger(weights / "tagger", len(manifest.entity_tags), len(manifest.modifier_tags))
        export_tagger(tagger, staging, keep_fp32=(model_dir / TAGGER_FILES["fp32"]).exists())
        write_pair_head(tagger, staging)
        if manifest.relation_head == "markers":
            relation = load_relation(weights / "relation")
            export_relation(relation, staging, keep_fp32=(model_dir / RELATION_FILES["fp32"]).exists())
        manifest.quantization = QUANT_RECIPE
        manifest.energy_outputs = True
        manifest.graph_attention = GRAPH_ATTENTION
        (staging / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
        for path in sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST_NAME):
            os.replace(path, model_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
