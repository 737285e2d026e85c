"""Training: configs, datasets, aspect buckets and the SFT / DPO trainers (accelerate).

Names resolve lazily so that ``import idglow.training`` stays cheap."""

from __future__ import annotations

from idglow._lazy import lazy_getattr

_LAZY = {
    "TrainingConfig": "idglow.training.config",
    "SFTConfig": "idglow.training.config",
    "DPOConfig": "idglow.training.config",
    "BaseTrainer": "idglow.training.trainer",
    "SFTTrainer": "idglow.training.trainer",
    "DPOTrainer": "idglow.training.trainer",
    "TrainOutput": "idglow.training.trainer",
    "PromptEmbedder": "idglow.training.caching",
    "CachedLatentsDataset": "idglow.training.caching",
    "IdGlowDenoiser": "idglow.training.modeling",
    "build_synthetic_model": "idglow.training.modeling",
    "euler_sample": "idglow.training.modeling",
    "collate_group_samples": "idglow.training.data",
    "SyntheticSFTDataset": "idglow.training.data",
    "PreferencePairDataset": "idglow.training.data",
    "BucketBatchSampler": "idglow.training.buckets",
    "make_buckets": "idglow.training.buckets",
    "nearest_bucket": "idglow.training.buckets",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("idglow.training", _LAZY, globals())
