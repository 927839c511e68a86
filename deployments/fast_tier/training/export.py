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

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

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


def quantize(src: Path, dst: Path) -> None:
    """Dynamic int8 weights (MatMul/Gemm), per output channel; activations quantized at run time;
    the encoder's first layer stays fp32.

    Per-channel scales cost nothing measurable in speed here and recovered about 1.4 points of
    strict entity F1 that per-tensor scales lost on the dev split. The first transformer layer is
    where int8 lost accuracy (its inputs, the embeddings, have the widest range): all layers in
    int8 cost 0.85 points of strict entity F1 on dev against fp32; the first in fp32, 0.2, for
    about 4% of int8's speed. The classification heads made no difference either way. Fusing
    attention first with onnxruntime.transformers (possible once the encoder is exported with
    eager attention) made int8 slower on this CPU, so the graph is quantized unfused.
    """
    first_layer = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "MatMul" and "/layer.0/" in n.name]
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=first_layer,
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
