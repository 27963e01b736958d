"""The π3 family (yyfz/Pi3): π3 and Pi3X (conditioning off), one DINOv2 encoder, an alternating
frame/global decoder without a reference view, local point maps, confidence and camera poses."""

from fin3r.models.pi3 import checkpoint
from fin3r.models.pi3.configs import (
    OFFICIAL_DECODER_SIZES,
    PI3_CONFIG,
    PI3_CONFIGS,
    PI3_TINY_CONFIG,
    PI3X_CONFIG,
    PI3X_TINY_CONFIG,
)
from fin3r.models.pi3.model import Pi3, confidence_from_logits
from fin3r.models.pi3.replay import pi3_replay_loss
from fin3r.models.spec import ModelFamily

#: π3 and Pi3X
PI3 = ModelFamily(
    name="pi3", model_class=Pi3, configs=PI3_CONFIGS, detect=checkpoint.detect, read=checkpoint.read,
    check_config=checkpoint.check_config, write_official=checkpoint.save_official,
    hf_config=lambda model: model.hf_config(), replay_loss=pi3_replay_loss, patch_size=14,
    normalization="ImageNet mean/std", eval_side=518, metric=False, views_per_forward=None,
    layout="a state_dict (.safetensors / .pth, or a Hugging Face folder holding model.safetensors) with "
           "camera_decoder.projects.* keys",
    fallback_config=checkpoint.fallback_config,
    released_adapter_prefixes={"aggregator.patch_embed.": "encoder."},
)

__all__ = ["OFFICIAL_DECODER_SIZES", "PI3", "PI3_CONFIG", "PI3_CONFIGS", "PI3_TINY_CONFIG", "PI3X_CONFIG",
           "PI3X_TINY_CONFIG", "Pi3", "confidence_from_logits"]
