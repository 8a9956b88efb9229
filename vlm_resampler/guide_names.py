"""The earlier system's names (the user guide's) for resampler types and stages, with its aliases,
mapped to ours: shared by the guide-format importer (config/legacy.py) and the guide-format
metadata reader (runs/guide_metadata.py)."""

from __future__ import annotations

RESAMPLER_TYPES = {  # the guide's names and the original code's aliases -> conf/resampler option
    "bimamba": "bimamba", "bidirectional_mamba": "bimamba", "bi_mamba": "bimamba",
    "mlp": "mlp", "perceiver": "perceiver", "qformer": "qformer",
}  # fmt: skip
STAGES = {  # the original's stage names and aliases -> our stage
    "vision": "vision", "vision_pretraining": "vision", "vision_pretrain": "vision",
    "joint_vision_resampler": "vision", "joint_resampler": "vision",
    "resampler": "resampler", "resampler_training": "resampler",
    "finetune": "finetune", "instruction_tuning": "finetune", "instruction_tune": "finetune", "final_finetune": "finetune",
}  # fmt: skip
