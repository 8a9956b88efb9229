"""The architectures of the hub backbones conf/backbone/ names, as config facts (no weights), so
that `launch/inspect.py backbone=<hub option>` builds them on the meta device offline, and
`vlm-resampler/random-*` builds them at full size with random weights (a real-size CPU check).

The values are those of each repository's config.json (the fields that fix the architecture; for
the image-text SigLIP checkpoints, their vision config, the only part loaded). Exact parameter
counts they give (tests/test_real_size.py checks them against hand counts):

    google/siglip-base-patch16-224    vision tower  92,884,224  (SigLIP-B/16, with its attention-pooling head)
    google/siglip2-so400m-patch16-256 vision tower 427,888,064  (So400m/16, FixRes: SigLIP's architecture)
    Qwen/Qwen3-0.6B                   596,049,920  (embeddings tied; 440,467,456 without them)
    Qwen/Qwen3-1.7B                 1,720,574,976  (embeddings tied; 1,409,410,048 without them)
"""

from __future__ import annotations

SIGLIP_VISION = {"model_type": "siglip_vision_model", "num_channels": 3, "hidden_act": "gelu_pytorch_tanh"}
QWEN3 = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

ARCHITECTURES = {
    "google/siglip-base-patch16-224": SIGLIP_VISION
    | {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "patch_size": 16,
        "image_size": 224,
        "layer_norm_eps": 1e-06,
    },
    "google/siglip2-so400m-patch16-256": SIGLIP_VISION
    | {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "patch_size": 16,
        "image_size": 256,
        "layer_norm_eps": 1e-06,
    },
    "Qwen/Qwen3-0.6B": QWEN3 | {"hidden_size": 1024, "intermediate_size": 3072},
    "Qwen/Qwen3-1.7B": QWEN3 | {"hidden_size": 2048, "intermediate_size": 6144},
}


# The dtype each checkpoint stores its weights in (config.json's torch_dtype): SigLIP's are float32,
# Qwen3's bfloat16. A process loading a 16-bit checkpoint in float32 holds its own copy of it
# (inspection/host_memory.py).
STORED_DTYPES = {
    "google/siglip-base-patch16-224": "float32",
    "google/siglip2-so400m-patch16-256": "float32",
    "Qwen/Qwen3-0.6B": "bfloat16",
    "Qwen/Qwen3-1.7B": "bfloat16",
}


def known_architecture(name_or_path: str, revision: str | None):
    """The transformers config of a hub backbone this project knows (None for any other, or for a
    pinned revision: a pinned commit may differ from these facts)."""
    from transformers import AutoConfig

    facts = ARCHITECTURES.get(name_or_path)
    if facts is None or revision is not None:
        return None
    facts = dict(facts)
    return AutoConfig.for_model(facts.pop("model_type"), **facts)
