"""Rewrites mamba-ssm's setup.py (an unpacked copy, in .ci/gpu-check) to compile its kernels for one
GPU architecture: the setup.py lists a `-gencode` pair per architecture CUDA knows (nine under
CUDA 13), nine times the compile work a lent GPU's minutes allow. Only those pairs change; a
removed pair becomes `pass`, so that an `if` block left without pairs stays valid Python.

    python .ci/mamba_one_arch.py SETUP_PY ARCH        # ARCH as in sm_ARCH: 90 for an H100 / H200
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

GENCODE_PAIR = re.compile(
    r'^(?P<indent>[ \t]*)cc_flag\.append\("-gencode"\)\n'
    r'[ \t]*cc_flag\.append\("arch=compute_(?P<arch>\w+),code=sm_\w+"\)\n',
    re.MULTILINE,
)


def keep_one_architecture(setup_text: str, arch: str) -> str:
    found = [m["arch"] for m in GENCODE_PAIR.finditer(setup_text)]
    if found.count(arch) != 1:
        raise ValueError(
            f"setup.py has {found.count(arch)} -gencode pairs for sm_{arch} (expected 1); it lists {found}"
        )
    return GENCODE_PAIR.sub(lambda m: m[0] if m["arch"] == arch else f"{m['indent']}pass\n", setup_text)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    setup, arch = Path(argv[0]), argv[1]
    try:
        text = keep_one_architecture(setup.read_text(), arch)
    except ValueError as err:
        print(f"mamba_one_arch: {setup}: {err}", file=sys.stderr)
        return 1
    compile(text, str(setup), "exec")  # a rewrite that broke the file fails here, not in pip
    setup.write_text(text)
    print(f"mamba_one_arch: {setup} compiles for sm_{arch} only")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
