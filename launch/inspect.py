#!/usr/bin/env python
"""Exact parameter counts, trainable sets per stage and token counts, without training or downloading.

    python launch/inspect.py resampler=bimamba resampler.hidden_dim=1024
    python launch/inspect.py runs/NAME                  # or a stage dir: runs/NAME/finetune
    python launch/inspect.py --compare "resampler=bimamba resampler.expand=1.75" "resampler=mlp"
    python launch/inspect.py --json resampler=mlp

The logic is in vlm_resampler.inspection (cli.py).
"""

# This file is named like the standard library's `inspect`, which torch, transformers and Hydra
# import. Python puts the script's folder (launch/) first on sys.path, so without the two guards
# below `import inspect` would find this file: when it runs as a script (guard 1: take launch/ off
# sys.path before importing anything else), and when another script in launch/ (train.py,
# eval.py, ...) imports `inspect` (guard 2: load the standard library module in our place).
import os
import sys

_LAUNCH_DIR = os.path.dirname(os.path.abspath(__file__))


def _path_without_launch_dir() -> list[str]:
    return [p for p in sys.path if os.path.abspath(p or os.curdir) != _LAUNCH_DIR]


if __name__ != "__main__":  # guard 2: imported as `inspect` by a sibling script
    import importlib.machinery
    import importlib.util

    _spec = importlib.machinery.PathFinder.find_spec(__name__, _path_without_launch_dir())
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module  # the import statement returns what sys.modules holds
    _spec.loader.exec_module(_module)
else:  # guard 1
    sys.path[:] = _path_without_launch_dir()
    # Inspect reads configs only: never let transformers reach for the hub (read at its import).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vlm_resampler.errors import short_errors
    from vlm_resampler.inspection.cli import main

    with short_errors("inspect"):
        sys.exit(main())
