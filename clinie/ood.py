"""Out-of-distribution statistics: Mahalanobis distance of pooled note embeddings.

Fitted on the training notes' embeddings and stored with the model (`ood_stats.npz`). With fewer
notes than embedding dimensions the sample covariance is singular, so it is shrunk towards a
scaled identity with the Ledoit-Wolf weight (computed here in numpy, no scikit-learn). The score
is reported as the distance divided by sqrt(dimensions), so 1.0 is "as far as a typical training
note", whatever the encoder width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOD_FILE = "ood_stats.npz"


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrunk covariance of rows `x` ([n, d]) and the shrinkage weight used (0..1)."""
    n, d = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = float(np.trace(s)) / d
    target = mu * np.eye(d)
    delta = float(((s - target) ** 2).sum()) / d
    beta = float(sum((((row[:, None] * row[None, :]) - s) ** 2).sum() for row in xc)) / (n * n * d)
    shrink = 1.0 if delta == 0 else min(beta / delta, 1.0)
    return shrink * target + (1 - shrink) * s, shrink


@dataclass(frozen=True)
class OODStats:
    """Mean and precision of training-note embeddings, plus the training scores' quantiles."""

    mean: np.ndarray  # [d]
    precision: np.ndarray  # [d, d]
    shrinkage: float
    n_notes: int
    train_p50: float
    train_p95: float

    @classmethod
    def fit(cls, embeddings: np.ndarray) -> OODStats:
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError("OOD statistics need at least two embeddings, as rows")
        cov, shrink = ledoit_wolf(x)
        stats = cls(x.mean(0), np.linalg.pinv(cov), shrink, len(x), 0.0, 0.0)
        scores = np.array([stats.score(row) for row in x])
        return cls(stats.mean, stats.precision, shrink, len(x), *np.quantile(scores, [0.5, 0.95]).tolist())

    def score(self, embedding: np.ndarray) -> float:
        """Mahalanobis distance / sqrt(d): higher means less like the training notes."""
        diff = np.asarray(embedding, dtype=np.float64) - self.mean
        return float(np.sqrt(max(diff @ self.precision @ diff, 0.0) / len(diff)))

    def save(self, path: Path) -> None:
        np.savez(
            path,
            mean=self.mean,
            precision=self.precision,
            meta=np.array([self.shrinkage, self.n_notes, self.train_p50, self.train_p95]),
        )

    @classmethod
    def load(cls, path: Path) -> OODStats:
        with np.load(path) as z:
            shrink, n, p50, p95 = z["meta"].tolist()
            return cls(z["mean"], z["precision"], float(shrink), int(n), float(p50), float(p95))

    @classmethod
    def load_if_present(cls, path: Path | str | None) -> OODStats | None:
        """The statistics at `path`, or None for a model exported without them (the OOD signal is
        then absent, not an error)."""
        return cls.load(Path(path)) if path and Path(path).exists() else None
