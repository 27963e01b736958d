"""The VGGT family: a DINOv2 encoder, alternating frame/global attention, camera and DPT heads."""

from fin3r.models.vggt import checkpoint
from fin3r.models.vggt.model import VGGT_1B_CONFIG, VGGT_TINY_CONFIG, Vggt
from fin3r.models.vggt.replay import vggt_replay_loss
from fin3r.models.spec import ModelFamily

#: known configurations: VGGT-1B (facebook/VGGT-1B, track head not built) and the golden fixtures' tiny one
VGGT_CONFIGS = {"vggt_1b": VGGT_1B_CONFIG, "vggt_tiny": VGGT_TINY_CONFIG}

#: VGGT
VGGT = ModelFamily(
    name="vggt", model_class=Vggt, configs=VGGT_CONFIGS, detect=checkpoint.detect, read=checkpoint.read,
    check_config=checkpoint.check_config, write_official=checkpoint.save_official,
    hf_config=lambda model: model.hf_config(), replay_loss=vggt_replay_loss, patch_size=14,
    normalization="ImageNet mean/std", eval_side=518, eval_side_is_width=True, metric=False, views_per_forward=None,
    layout="a state_dict (model.pt / .safetensors, or a Hugging Face folder holding one) whose keys start with "
           "aggregator.patch_embed.",
    fallback_config=lambda state_dict: "vggt_1b",
)

__all__ = ["VGGT", "VGGT_CONFIGS", "Vggt"]
