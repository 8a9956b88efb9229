"""`_target_`s read from a run directory are untrusted: only the registry below is instantiated.

The registry names, exactly, every class and function that a model tree of ours uses (the
`_target_`s of conf/'s model groups; tests/test_hardening.py checks the two agree). A new backbone
loader or model part is added here by name, beside its conf/ file. A new resampler or view
strategy needs no line: every `Resampler` subclass defined in a module of vlm_resampler/resamplers/
is allowed, and every `ViewStrategy` subclass of vlm_resampler/panorama/ under the name
panorama/views.py exports it by, both found by parsing those files (never importing them)."""

from __future__ import annotations

import ast
from pathlib import Path

from vlm_resampler.errors import UserFacingError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
RESAMPLERS_DIR = PACKAGE_DIR / "resamplers"
PANORAMA_DIR = PACKAGE_DIR / "panorama"


def subclasses_defined(folder: Path, base: str) -> dict[str, str]:
    """{class: module} of every class that a module of `folder` defines directly on `base`."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and any(
                isinstance(parent, ast.Name) and parent.id == base for parent in node.bases
            ):
                found[node.name] = path.stem
    return found


def resampler_classes(folder: Path = RESAMPLERS_DIR) -> frozenset[str]:
    """`vlm_resampler.resamplers.<module>.<Class>` of every resampler the package defines."""
    return frozenset(
        f"vlm_resampler.resamplers.{module}.{name}" for name, module in subclasses_defined(folder, "Resampler").items()
    )


def view_classes(folder: Path = PANORAMA_DIR) -> frozenset[str]:
    """`vlm_resampler.panorama.views.<Class>` of every view strategy that views.py (the import path
    conf/view/ and saved run directories name) imports from the module that defines it."""
    defined = subclasses_defined(folder, "ViewStrategy")
    exported = set()
    for node in ast.parse((folder / "views.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlm_resampler.panorama."):
            module = node.module.rsplit(".", 1)[1]
            exported |= {alias.name for alias in node.names if defined.get(alias.name) == module}
    return frozenset(f"vlm_resampler.panorama.views.{name}" for name in exported)


ALLOWED_TARGETS = (
    resampler_classes()
    | view_classes()
    | frozenset(
        {
            "vlm_resampler.models.backbones.load_language_model",
            "vlm_resampler.models.backbones.load_vision_encoder",
            "vlm_resampler.models.projector.TokenMLP",
            "vlm_resampler.models.stitching.ViewStitcher",
            "vlm_resampler.models.vlm.PanoramaVLM",
        }
    )
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
