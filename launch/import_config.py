#!/usr/bin/env python
"""Turn a config in the user guide's format into a Hydra experiment preset.

    python launch/import_config.py old.yaml                 # -> conf/experiment/<experiment.name>.yaml
    python launch/import_config.py old.yaml --name my_exp   # -> conf/experiment/my_exp.yaml
    python launch/import_config.py old.yaml --force         # replace an existing preset

Each key is printed with what it became; a key that is not understood stops the import (exit 2)
before anything is written. The written preset is checked as train.py checks a config; then
`python launch/train.py experiment=<name>` runs it. The logic is in vlm_resampler.config.legacy.
"""

from __future__ import annotations

import sys

from vlm_resampler.config.legacy_cli import main

if __name__ == "__main__":
    sys.exit(main())
