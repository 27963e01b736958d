"""fin3r: Fin3R fine-tuning for feed-forward 3D reconstruction models.

Encoder-only monocular distillation with re-normalized LoRA, multi-view replay, and adapters that
merge into the base weights (zero inference overhead). See the README for the commands.
"""

__version__ = "0.1.0"
