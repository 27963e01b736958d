"""The transformer MLP: ``fc1 -> GELU (exact) -> fc2`` (keys ``fc1``, ``fc2``)."""

from __future__ import annotations

from torch import Tensor, nn


class Mlp(nn.Module):
    """``(..., in_features) -> (..., out_features)`` with an exact-GELU hidden layer."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 bias: bool = True):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


__all__ = ["Mlp"]
