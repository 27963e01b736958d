"""The π3 family (yyfz/Pi3): model, heads, known configurations."""

from fin3r.models.pi3.configs import (
    OFFICIAL_DECODER_SIZES,
    PI3_CONFIG,
    PI3_CONFIGS,
    PI3_TINY_CONFIG,
    PI3X_CONFIG,
    PI3X_TINY_CONFIG,
)
from fin3r.models.pi3.model import Pi3, confidence_from_logits

__all__ = ["OFFICIAL_DECODER_SIZES", "PI3_CONFIG", "PI3_CONFIGS", "PI3_TINY_CONFIG", "PI3X_CONFIG", "PI3X_TINY_CONFIG", "Pi3",
           "confidence_from_logits"]
