"""The CUT3R family (``ARCroco3DStereo``): a recurrent-state CroCo model."""

from fin3r.models.cut3r import checkpoint
from fin3r.models.cut3r.model import CUT3R_CONFIGS, Cut3r
from fin3r.models.cut3r.replay import cut3r_replay_loss
from fin3r.models.spec import ModelFamily

#: CUT3R
CUT3R = ModelFamily(
    name="cut3r", model_class=Cut3r, configs=CUT3R_CONFIGS, detect=checkpoint.detect, read=checkpoint.read,
    check_config=checkpoint.check_config, write_official=checkpoint.save_official_pth,
    hf_config=checkpoint.hf_config, replay_loss=cut3r_replay_loss, patch_size=16, normalization="[-1, 1]",
    eval_side=512, metric=False, views_per_forward=None,
    layout="an official .pth whose args.model is ARCroco3DStereo(ARCroco3DStereoConfig(...)) (OmegaConf or "
           "argparse args) or whose weights hold dec_blocks_state.*",
    fallback_config=checkpoint.guess_config_name,
)

__all__ = ["CUT3R", "Cut3r"]
