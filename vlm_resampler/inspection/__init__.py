"""What a config builds, without building it: the resolved resampler settings, exact parameter
counts per module, what each stage trains, and how many tokens reach the LLM.

The model is the one training would build (the same `_target_` tree, the same PanoramaVLM
assembly, the trainer's own freeze matrix from training/stages.py), instantiated on the meta
device: shapes only, no memory, no weights. Backbones are built from their config alone
(`from_config`), which must be available locally: a locally built backbone has it in its cache
directory, a hub model needs its config.json in the local HF cache; nothing is downloaded.

    python launch/inspect.py resampler=bimamba resampler.hidden_dim=1024
    python launch/inspect.py runs/NAME            # a run dir: its resolved_config.yaml
    python launch/inspect.py runs/NAME/finetune   # a stage dir: its checkpoint_metadata.json
    python launch/inspect.py --compare "resampler=bimamba resampler.expand=1.75" "resampler=mlp"
"""
