#!/usr/bin/env python
"""Benchmark view rendering: our torch projection against py360convert, in the same run.

    nice python launch/bench_views.py                       # 2048x1024 ERP -> 9 views of 224x224
    nice python launch/bench_views.py --batch 16 --threads 2

Both sides render the same views (fov 90, 9 yaws around the horizon, bilinear) from the same
[0, 1] float32 image; py360convert gets it as an HWC numpy array (its format), ours as a CHW
tensor (the pipeline's format), conversions outside the timings. Our sampling plan is built once
per (strategy, ERP size, device, dtype) and reused; its one-off cost is printed separately.
The last line reads `speedup vs py360convert: 12.3x` (per image, one image at a time).
"""

from __future__ import annotations

import argparse
import statistics
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run it by hand (not a test); timings depend on the machine's load.",
    )
    parser.add_argument(
        "--erp-width", type=int, default=2048, help="ERP width in pixels (default 2048; height = width / 2)"
    )
    parser.add_argument("--views", type=int, default=9, help="views around the horizon (default 9)")
    parser.add_argument("--size", type=int, default=224, help="view size in pixels (default 224)")
    parser.add_argument("--fov", type=float, default=90.0, help="view field of view in degrees (default 90)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch for the throughput line (default 8)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per measurement; the median is reported (default 5)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="device for our side, e.g. cuda (default cpu)")
    return parser.parse_args()


def median_seconds(fn, repeats: int, sync=lambda: None) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    import numpy as np
    import py360convert
    import torch
    import torch.nn.functional as F

    from vlm_resampler.panorama.views import HorizonViews

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    height, width = args.erp_width // 2, args.erp_width
    coarse = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(0))
    erp = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    erp = (erp + 0.1 * torch.rand(erp.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    erp_hwc = np.ascontiguousarray(erp.permute(1, 2, 0).numpy())
    strategy = HorizonViews(fov_deg=args.fov, overlap=0.0, size=args.size, num_views=args.views)
    metas = strategy.metadata()
    print(
        f"ERP {width}x{height} -> {len(metas)} views of {args.size}x{args.size}, fov {args.fov:g}, "
        f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads)"
    )

    erp_dev = erp.to(device)
    start = time.perf_counter()
    ours_views = strategy.views(erp_dev)
    sync()
    print(f"ours: first call (builds and caches the sampling plan): {time.perf_counter() - start:.3f} s")
    ours_s = median_seconds(lambda: strategy.views(erp_dev), args.repeats, sync)
    print(f"ours: {ours_s * 1e3:.1f} ms per image ({ours_s / len(metas) * 1e3:.2f} ms per view)")

    def py360_views():
        return [
            py360convert.e2p(erp_hwc, args.fov, m.yaw_deg, m.pitch_deg, (args.size, args.size), mode="bilinear")
            for m in metas
        ]

    ref = py360_views()
    ref_s = median_seconds(py360_views, max(1, min(args.repeats, 3)))
    print(
        f"py360convert {py360convert.__version__}: {ref_s * 1e3:.1f} ms per image ({ref_s / len(metas) * 1e3:.2f} ms per view)"
    )

    ref_t = torch.from_numpy(np.stack(ref)).permute(0, 3, 1, 2)
    diff = (ours_views.cpu() - ref_t).abs()
    print(f"parity: mean abs difference {diff.mean():.5f}, max {diff.max():.5f} (images in [0, 1])")

    batch = erp_dev.unsqueeze(0).expand(args.batch, -1, -1, -1).contiguous()
    strategy.views(batch)
    batch_s = median_seconds(lambda: strategy.views(batch), args.repeats, sync)
    print(
        f"ours, batch of {args.batch}: {batch_s * 1e3:.1f} ms -> {args.batch / batch_s:.1f} images/s, "
        f"{args.batch * len(metas) / batch_s:.0f} views/s ({batch_s / args.batch * 1e3:.1f} ms per image)"
    )
    print(f"py360convert: {1.0 / ref_s:.1f} images/s, {len(metas) / ref_s:.0f} views/s")
    print(f"speedup vs py360convert: {ref_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
