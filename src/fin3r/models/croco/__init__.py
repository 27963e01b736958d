"""The CroCo family: DUSt3R and MASt3R (one trunk, two head types), as two registry families."""

from fin3r.models.croco import checkpoint
from fin3r.models.croco.configs import DUST3R_CONFIGS, MAST3R_CONFIGS
from fin3r.models.croco.dust3r import Dust3r
from fin3r.models.croco.mast3r import Mast3r
from fin3r.models.croco.replay import dust3r_replay_loss, mast3r_replay_loss
from fin3r.models.spec import ModelFamily

_COMMON = dict(detect=checkpoint.detect, read=checkpoint.read, check_config=checkpoint.check_config,
               write_official=checkpoint.save_official_pth, hf_config=checkpoint.hf_config,
               patch_size=16, normalization="[-1, 1]", eval_side=512, views_per_forward=2,
               layout="an official .pth whose args.model is AsymmetricCroCo3DStereo(...) / AsymmetricMASt3R(...), "
                      "or a Hugging Face folder whose config.json holds their constructor kwargs")

#: DUSt3R (``AsymmetricCroCo3DStereo``)
DUST3R = ModelFamily(name="dust3r", model_class=Dust3r, configs=DUST3R_CONFIGS, replay_loss=dust3r_replay_loss,
                     **_COMMON)
#: MASt3R (``AsymmetricMASt3R``): metric points and descriptors
MAST3R = ModelFamily(name="mast3r", model_class=Mast3r, configs=MAST3R_CONFIGS, replay_loss=mast3r_replay_loss,
                     metric=True, **_COMMON)

__all__ = ["DUST3R", "MAST3R", "Dust3r", "Mast3r"]
