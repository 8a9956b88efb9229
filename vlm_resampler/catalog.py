"""What the checkout's conf/ tree offers, for the layers that only need to look a name up (the
one place below config/ that reads conf/): where it is, and which resampler takes a key."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from vlm_resampler.suggest import did_you_mean

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def conf_options(group: str) -> dict[str, dict]:
    """conf/<group>/*.yaml, each resolved on its own (a backbone's tokenizer follows its LLM); a
    view's size follows ${backbone.image_size} and is left for the caller to fill."""
    options = {}
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        options[path.stem] = OmegaConf.to_container(OmegaConf.load(path), resolve=group != "view")
    return options


def resampler_options() -> list[str]:
    """Every resampler type there is: the options of conf/resampler/ (tests and tools discover them here)."""
    return sorted(path.stem for path in (CONF_DIR / "resampler").glob("*.yaml"))


def resampler_options_with(key: str) -> list[str]:
    options = []
    for path in sorted((CONF_DIR / "resampler").glob("*.yaml")):
        if key in OmegaConf.load(path):
            options.append(path.stem)
    return options


def unknown_resampler_key(key: str, valid: list[str], class_name: str | None = None) -> str:
    """The one message for a key the chosen resampler does not take (with the types that do)."""
    owner = f" ({class_name})" if class_name else ""
    message = f"resampler.{key} is not a parameter of this resampler{owner}.{did_you_mean(key, valid)}"
    elsewhere = resampler_options_with(key)
    if elsewhere:
        message += f" `{key}` is a parameter of resampler={', '.join(elsewhere)}."
    return message
