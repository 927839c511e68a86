"""PyTorch eager backends over the saved training weights: the baseline the ONNX variants are
measured against (benchmarks), and a check that export changed nothing. Serving never uses this."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deployments.fast_tier.config import MANIFEST_NAME, ModelManifest
from deployments.fast_tier.engine import RelationBackend, TaggerBackend, TaggerOutput
from deployments.fast_tier.training.modeling import RelationForExport, TaggerForExport, load_relation, load_tagger


def torch_backends(model_dir: Path) -> tuple[TaggerBackend, RelationBackend | None]:
    """fp32 eager modules with the same inputs and outputs as the ONNX graphs (no relation module
    for a model whose relations come from the tagger's span-pair head)."""
    weights = model_dir / "pytorch"
    if not (weights / "tagger").is_dir():
        raise FileNotFoundError(f"no PyTorch weights under {weights}; train with keep_pytorch=True")
    manifest = ModelManifest.model_validate_json((model_dir / MANIFEST_NAME).read_text())
    tagger = TaggerForExport(load_tagger(weights / "tagger", len(manifest.entity_tags), len(manifest.modifier_tags)))

    @torch.inference_mode()
    def run_tagger(ids: np.ndarray, mask: np.ndarray) -> TaggerOutput:
        out = [t.numpy() for t in tagger(torch.from_numpy(ids), torch.from_numpy(mask))]
        return out[0], out[1], out[2], out[3], out[4], out[5] if len(out) > 5 else None

    if manifest.relation_head == "span_pair":
        return run_tagger, None
    relation = RelationForExport(load_relation(weights / "relation"))

    @torch.inference_mode()
    def run_relation(
        ids: np.ndarray, mask: np.ndarray, e_pos: np.ndarray, pair_batch: np.ndarray, m_pos: np.ndarray
    ) -> np.ndarray:
        return relation(*(torch.from_numpy(x) for x in (ids, mask, e_pos, pair_batch, m_pos))).numpy()

    return run_tagger, run_relation
