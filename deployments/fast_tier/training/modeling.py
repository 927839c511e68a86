"""The fast tier's PyTorch modules (training, export and the eager baseline only; serving uses ONNX).

- `JointTagger`: one BERT-family encoder with two token-classification heads, entity BIO (4 types)
  and modifier BIO (16 types). Sharing the encoder halves the serving cost of the two taggers;
  it also returns the mean-pooled encoder embedding, which the router's out-of-distribution
  signal needs without a second pass.
- `SpanPairHead`: the one-pass relation head (deployments/fast_tier/pairs.py): an (entity,
  modifier) pair scored from the tagger's own token states at the two spans' first and last
  word-pieces, their types and their distance. Trained with the tagger, on its encoder pass.
- `RelationClassifier` (the `markers` relation path, kept for comparison): the same kind of
  encoder over a sentence in which the entity and its candidate modifiers are marked (typed
  punctuation markers); the hidden states at the entity's and a modifier's opening markers feed a
  binary head. A second encoder pass per entity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel

from clinie.schema import ENTITY_TYPES, MODIFIER_TYPES
from deployments.fast_tier.pairs import N_DISTANCE_BUCKETS, PairHead


def load_encoder(source: str | Path, from_config_only: bool = False) -> nn.Module:
    """A BERT-family encoder from a local directory or a hub id (where the network allows)."""
    if from_config_only:
        return AutoModel.from_config(AutoConfig.from_pretrained(str(source)))
    return AutoModel.from_pretrained(str(source))


def _encode(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    # token_type_ids are always zero here; passing them keeps BERT from building its own buffer
    # (which traces badly for ONNX on some versions).
    out = encoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=torch.zeros_like(input_ids),
    )
    return out.last_hidden_state


class SpanPairHead(nn.Module):
    """Relation logits of (entity, modifier) pairs from token states (pairs.PairHead in numpy).

    Input of the MLP: the states at the entity's first and last word-piece, the modifier's first
    and last, (`context`) the mean state between the two spans, an entity-type, a modifier-type
    and a distance-bucket embedding."""

    def __init__(self, hidden: int, type_dim: int = 32, inner: int = 256, dropout: float = 0.1, context: bool = True):
        super().__init__()
        self.context = context
        self.entity_type = nn.Embedding(len(ENTITY_TYPES), type_dim)
        self.modifier_type = nn.Embedding(len(MODIFIER_TYPES), type_dim)
        self.distance = nn.Embedding(N_DISTANCE_BUCKETS, type_dim)
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear((5 if context else 4) * hidden + 3 * type_dim, inner),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(inner, 1),
        )

    def forward(self, states: torch.Tensor, rows: torch.Tensor, index: dict[str, torch.Tensor]) -> torch.Tensor:
        """`states` (batch, seq, hidden); pair k lies in row `rows[k]` at the positions of `index`
        (pairs.PairIndex.arrays(): the span boundaries, the between-spans range, the types)."""

        def at(pos: torch.Tensor) -> torch.Tensor:
            return states[rows, pos]

        parts = [at(index["e_first"]), at(index["e_last"]), at(index["m_first"]), at(index["m_last"])]
        if self.context:
            cum = torch.cat([states.new_zeros(states.shape[0], 1, states.shape[2]), states.cumsum(1)], dim=1)
            lo, hi = index["lo"], index["hi"]
            parts.append((cum[rows, hi] - cum[rows, lo]) / (hi - lo).clamp(min=1).unsqueeze(-1).to(states.dtype))
        x = torch.cat(
            [
                *parts,
                self.entity_type(index["e_type"]),
                self.modifier_type(index["m_type"]),
                self.distance(index["bucket"]),
            ],
            dim=-1,
        )
        return self.mlp(x).squeeze(-1)

    def numpy(self) -> PairHead:
        """The weights for serving (pairs.PairHead)."""
        first, last = self.mlp[1], self.mlp[4]

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        return PairHead(
            entity_type=arr(self.entity_type.weight),
            modifier_type=arr(self.modifier_type.weight),
            distance=arr(self.distance.weight),
            w1=arr(first.weight).T.copy(),
            b1=arr(first.bias),
            w2=arr(last.weight)[0].copy(),
            b2=arr(last.bias)[0],
        )


class JointTagger(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        n_entity_tags: int,
        n_modifier_tags: int,
        dropout: float = 0.1,
        pair_head: bool = False,
        pair_context: bool = True,
    ):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.entity_head = nn.Linear(hidden, n_entity_tags)
        self.modifier_head = nn.Linear(hidden, n_modifier_tags)
        self.pair_head = SpanPairHead(hidden, context=pair_context) if pair_head else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Entity and modifier tag logits, the mean-pooled embedding, and the token states."""
        hidden = _encode(self.encoder, input_ids, attention_mask)
        x = self.dropout(hidden)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.entity_head(x), self.modifier_head(x), pooled, hidden


class TaggerForExport(nn.Module):
    """Probabilities instead of logits, so serving needs no softmax of its own, plus each token's
    log-sum-exp of logits (the router's energy score; probabilities alone cannot give it), and,
    for a tagger with a pair head, the token states the head scores pairs from."""

    def __init__(self, tagger: JointTagger):
        super().__init__()
        self.tagger = tagger

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ent, mod, pooled, hidden = self.tagger(input_ids, attention_mask)
        out = (ent.softmax(-1), mod.softmax(-1), pooled, ent.logsumexp(-1), mod.logsumexp(-1))
        return (*out, hidden) if self.tagger.pair_head is not None else out


class RelationClassifier(nn.Module):
    """Scores pairs: each row of `pair_batch`/`modifier_pos` names an input and a modifier marker
    in it; the pair's entity is that input's `entity_pos`. One encoder pass serves all of an
    entity's candidate modifiers."""

    def __init__(self, encoder: nn.Module, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        entity_pos: torch.Tensor,
        pair_batch: torch.Tensor,
        modifier_pos: torch.Tensor,
    ) -> torch.Tensor:
        hidden = _encode(self.encoder, input_ids, attention_mask)
        width = hidden.shape[1]
        flat = hidden.reshape(-1, hidden.shape[-1])
        e = flat.index_select(0, pair_batch * width + entity_pos.index_select(0, pair_batch))
        m = flat.index_select(0, pair_batch * width + modifier_pos)
        return self.head(self.dropout(torch.cat([e, m], dim=-1)))


class RelationForExport(nn.Module):
    """Probability that each listed pair is related."""

    def __init__(self, model: RelationClassifier):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        entity_pos: torch.Tensor,
        pair_batch: torch.Tensor,
        modifier_pos: torch.Tensor,
    ) -> torch.Tensor:
        return self.model(input_ids, attention_mask, entity_pos, pair_batch, modifier_pos).softmax(-1)[:, 1]


def save_module(module: nn.Module, directory: Path) -> None:
    """Weights as safetensors plus the encoder's config, enough to rebuild without the source."""
    directory.mkdir(parents=True, exist_ok=True)
    encoder = module.encoder  # type: ignore[attr-defined]
    encoder.config.save_pretrained(directory)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(directory / "weights.safetensors"))


def load_tagger(directory: Path, n_entity_tags: int, n_modifier_tags: int) -> JointTagger:
    state = load_file(str(directory / "weights.safetensors"))
    with_pairs = any(k.startswith("pair_head.") for k in state)
    encoder = load_encoder(directory, from_config_only=True)
    # a head trained without the between-spans context has 4 state blocks in its first layer, not 5
    context = with_pairs and state["pair_head.mlp.1.weight"].shape[1] >= 5 * encoder.config.hidden_size
    model = JointTagger(encoder, n_entity_tags, n_modifier_tags, pair_head=with_pairs, pair_context=context)
    model.load_state_dict(state)
    return model.eval()


def load_relation(directory: Path) -> RelationClassifier:
    model = RelationClassifier(load_encoder(directory, from_config_only=True))
    model.load_state_dict(load_file(str(directory / "weights.safetensors")))
    return model.eval()
