"""`_target_`s read from a run directory are untrusted: only an allow-list is instantiated."""
from __future__ import annotations

ALLOWED_TARGET_PREFIXES = (
    "vlm_resampler.models.",
    "vlm_resampler.resamplers.",
    "vlm_resampler.panorama.",
    "torch.nn.",
)


# Where an allowed target's class or function must be defined: a name under an allowed prefix
# can still lead elsewhere through a module's imports (vlm_resampler.models.backbones.os.system).
ALLOWED_DEFINING_MODULES = ("vlm_resampler.", "torch.nn.")


class UntrustedTarget(ValueError):
    pass


def _check_defined_in_allowed_module(path: str, value: str) -> None:
    from hydra.utils import get_object

    try:
        obj = get_object(value)
    except (ImportError, AttributeError, ValueError) as err:
        raise UntrustedTarget(f"{path}={value!r} cannot be located: {err}") from err
    module = getattr(obj, "__module__", None)
    if not (isinstance(module, str) and module.startswith(ALLOWED_DEFINING_MODULES) and callable(obj)):
        raise UntrustedTarget(
            f"{path}={value!r} is not allowed: it names {getattr(obj, '__qualname__', type(obj).__name__)} "
            f"of module {module!r}, and only classes and functions defined under "
            f"{', '.join(ALLOWED_DEFINING_MODULES)} are instantiated from a run directory"
        )


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
                _check_defined_in_allowed_module(path, value)
            else:
                check_targets(value, path)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            check_targets(value, f"{where}[{i}]")
    elif isinstance(tree, str) and "${" in tree:
        raise UntrustedTarget(f"{where}={tree!r}: a saved config must be fully resolved (no interpolation)")
