"""`_target_`s read from a run directory are untrusted: only the registry below is instantiated.

The registry names, exactly, every class and function that a model tree of ours uses (the
`_target_`s of conf/'s model groups; tests/test_hardening.py checks the two agree). A new view
strategy or backbone loader is added here by name, beside its conf/ file; a new resampler needs
no line: every `Resampler` subclass defined in a module of vlm_resampler/resamplers/ is allowed,
found by parsing those files (never importing them)."""

from __future__ import annotations

import ast
from pathlib import Path

from vlm_resampler.errors import UserFacingError

RESAMPLERS_DIR = Path(__file__).resolve().parent.parent / "resamplers"


def resampler_classes(folder: Path = RESAMPLERS_DIR) -> frozenset[str]:
    """`vlm_resampler.resamplers.<module>.<Class>` of every class that the package's resampler
    modules define on `Resampler` (their source parsed, nothing imported or run)."""
    names = set()
    for path in sorted(folder.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id == "Resampler" for base in node.bases
            ):
                names.add(f"vlm_resampler.resamplers.{path.stem}.{node.name}")
    return frozenset(names)


ALLOWED_TARGETS = resampler_classes() | frozenset(
    {
        "vlm_resampler.models.backbones.load_language_model",
        "vlm_resampler.models.backbones.load_vision_encoder",
        "vlm_resampler.models.projector.TokenMLP",
        "vlm_resampler.models.stitching.ViewStitcher",
        "vlm_resampler.models.vlm.PanoramaVLM",
        "vlm_resampler.panorama.views.AnyResViews",
        "vlm_resampler.panorama.views.CubemapViews",
        "vlm_resampler.panorama.views.HorizonViews",
        "vlm_resampler.panorama.views.ResizeView",
        "vlm_resampler.panorama.views.SlidingWindowViews",
    }
)


class UntrustedTarget(UserFacingError, ValueError):
    pass


def refusal(value) -> str | None:
    """Why `value` may not be a `_target_` (None: it may). Nothing is imported to decide."""
    if isinstance(value, str) and value in ALLOWED_TARGETS:
        return None
    return (
        f"{value!r} is not allowed: only the {len(ALLOWED_TARGETS)} targets registered in "
        "vlm_resampler/runs/targets.py (ALLOWED_TARGETS) are instantiated"
    )


def check_targets(tree, where: str = "model") -> None:
    """Refuse any `_target_` outside the registry, and any unresolved interpolation."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{where}.{key}"
            if key == "_target_":
                reason = refusal(value)
                if reason is not None:
                    raise UntrustedTarget(f"{path}={reason}")
            else:
                check_targets(value, path)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            check_targets(value, f"{where}[{i}]")
    elif isinstance(tree, str) and "${" in tree:
        raise UntrustedTarget(f"{where}={tree!r}: a saved config must be fully resolved (no interpolation)")
