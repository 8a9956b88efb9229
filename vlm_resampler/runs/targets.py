"""`_target_`s read from a run directory are untrusted: only an allow-list is instantiated."""
from __future__ import annotations

ALLOWED_TARGET_PREFIXES = (
    "vlm_resampler.models.",
    "vlm_resampler.resamplers.",
    "vlm_resampler.panorama.",
    "torch.nn.",
)


class UntrustedTarget(ValueError):
    pass


def check_targets(tree, where: str = "model") -> None:
    """Refuse any `_target_` outside the allow-list, and any unresolved interpolation."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{where}.{key}"
            if key == "_target_":
                if not isinstance(value, str) or not value.startswith(ALLOWED_TARGET_PREFIXES):
                    raise UntrustedTarget(
                        f"{path}={value!r} is not allowed: only targets under "
                        f"{', '.join(ALLOWED_TARGET_PREFIXES)} are instantiated from a run directory"
                    )
            else:
                check_targets(value, path)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            check_targets(value, f"{where}[{i}]")
    elif isinstance(tree, str) and "${" in tree:
        raise UntrustedTarget(f"{where}={tree!r}: a saved config must be fully resolved (no interpolation)")
