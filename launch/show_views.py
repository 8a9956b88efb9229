#!/usr/bin/env python
"""Draw what the model sees: a panorama with each view's footprint, and the views in a row with
the strips they share with a neighbour shaded in that neighbour's colour. Writes a PNG and prints
its path.

    python launch/show_views.py                          # the default view strategy (e2p)
    python launch/show_views.py view=cubemap view.overlap=0.2
    python launch/show_views.py view=anyres_e2p 'view.row_pitches_deg=[-30,30]' --index 3
    python launch/show_views.py view=sliding_window --image my_pano.jpg --out /tmp/sw.png

The overrides are the same as launch/train.py's (composed from conf/train.yaml, same errors);
the panorama is item --index of the configured dataset's --split unless --image is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Draw a panorama's views (footprints on the ERP, views with overlap shaded) into a PNG.",
        epilog="Other arguments are Hydra overrides, as for launch/train.py (e.g. view=cubemap data.seed=1).",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. view=cubemap view.overlap=0.2")
    parser.add_argument("--image", type=Path, help="an ERP image file to use instead of the dataset")
    parser.add_argument(
        "--split", default="train", choices=("train", "val", "test"), help="dataset split (default train)"
    )
    parser.add_argument("--index", type=int, default=0, help="item of the split (default 0)")
    parser.add_argument("--width", type=int, default=1200, help="picture width in pixels (default 1200)")
    parser.add_argument("--out", type=Path, help="PNG path (default outputs/show_views/<view>.png)")
    return parser.parse_intermixed_args(argv)


def fail(message: str) -> None:
    """Stop like launch/train.py's preflight does: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def view_choice(overrides: list[str]) -> str:
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("view=")]
    return chosen[-1] if chosen else "e2p"


def load_panorama(cfg, args) -> torch.Tensor:  # noqa: F821
    from vlm_resampler.data.datasets import load_panorama as load_erp
    from vlm_resampler.data.datasets import prepare_split

    if args.image is not None:
        if not args.image.is_file():
            fail(f"--image {args.image}: no such file")
        from PIL import Image

        with Image.open(args.image) as img:
            width, height = img.size
        return load_erp(args.image, width, height)
    items = prepare_split(cfg.data, args.split)
    if not 0 <= args.index < len(items):
        fail(f"--index {args.index}: expected 0..{len(items) - 1} ({len(items)} items in split {args.split})")
    return load_erp(Path(items[args.index]["image"]), int(cfg.data.erp_width), int(cfg.data.erp_height))


def build_views(cfg):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg.view, _convert_="all")
    except InstantiationException as err:
        # Hydra wraps the strategy's own message ("view.overlap=1.2: expected ..."); show just that.
        fail(str(err.__cause__ or err))


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    from vlm_resampler.config.preflight import preflight
    from vlm_resampler.config.validate import walk_targets

    cfg = preflight("train", args.overrides, validate=lambda c: walk_targets(c.view, "view"))[0]
    strategy = build_views(cfg)
    erp = load_panorama(cfg, args)

    from vlm_resampler.panorama.overview import render_overview

    source = str(args.image) if args.image is not None else f"{cfg.data.name} {args.split}[{args.index}]"
    title = f"view={view_choice(args.overrides)}  {strategy!r}  {strategy.num_views} views  panorama: {source}"
    image = render_overview(erp, strategy, width=args.width, title=title)
    out = args.out or REPO_ROOT / "outputs" / "show_views" / f"{view_choice(args.overrides)}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(out.resolve())


if __name__ == "__main__":
    main(sys.argv[1:])
