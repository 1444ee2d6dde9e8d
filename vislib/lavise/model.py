"""The LaViSE explainer: maps pooled layer features to a point in word-embedding space."""

from __future__ import annotations

from torch import nn


class Explainer(nn.Sequential):
    """BN1d -> Dropout -> Linear d->d -> ReLU -> BN1d -> Dropout -> Linear d->D, as in the paper."""

    def __init__(self, in_features: int, embedding_dim: int, dropout: float = 0.1) -> None:
        super().__init__(
            nn.BatchNorm1d(in_features),
            nn.Dropout(dropout),
            nn.Linear(in_features, in_features),
            nn.ReLU(),
            nn.BatchNorm1d(in_features),
            nn.Dropout(dropout),
            nn.Linear(in_features, embedding_dim),
        )
        self.in_features = in_features
        self.embedding_dim = embedding_dim
