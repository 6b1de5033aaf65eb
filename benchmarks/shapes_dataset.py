"""Generation speed, loading speed and statistics of the built-in shapes dataset.

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/shapes_dataset.py [--repeats 3]
Writes nothing outside a temporary folder; prints a markdown summary.
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from d2lite.data.datasets.shapes import SHAPES_SPLITS, generate_shapes, render_shapes_image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    gen_times, render_times = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as root:
            start = time.perf_counter()
            for split, num, seed in SHAPES_SPLITS.values():
                generate_shapes(root, split, num, seed)
            gen_times.append(time.perf_counter() - start)
            files = [os.path.join(root, "val", f) for f in sorted(os.listdir(os.path.join(root, "val")))]
            start = time.perf_counter()
            for f in files:
                with Image.open(f) as im:
                    np.asarray(im.convert("RGB"))
            decode_ms = (time.perf_counter() - start) / len(files) * 1e3
            size_kb = sum(os.path.getsize(f) for f in files) / len(files) / 1024
        start = time.perf_counter()
        for i in range(200):
            render_shapes_image(1, i)
        render_times.append((time.perf_counter() - start) / 200 * 1200)

    areas, longest, counts, cats, sides, vis = [], [], [], [], [], []
    for _split, num, seed in SHAPES_SPLITS.values():
        for i in range(num):
            s = render_shapes_image(seed, i)
            a = s.masks.sum(axis=(1, 2))
            areas.extend(a)
            vis.extend(a / s.full_areas)
            longest.extend(s.boxes[:, 2:].max(axis=1))
            counts.append(len(s.category_ids))
            cats.extend(s.category_ids)
            sides.append(s.image.shape[:2])
    areas, longest, vis, sides = map(np.asarray, (areas, longest, vis, sides))

    print(
        f"| generate 1200 images (train+val, files + json), median of {args.repeats} | {statistics.median(gen_times):.2f} s |"
    )
    print(f"| of which rendering only (no files) | {statistics.median(render_times):.2f} s |")
    print(f"| JPEG decode (PIL, to RGB array) | {decode_ms:.2f} ms / image, {size_kb:.1f} KB / image |")
    print(
        f"| objects | {len(areas)} ({len(areas) / len(counts):.2f} per image; per-image counts 1..6: {np.bincount(counts, minlength=7)[1:].tolist()}) |"
    )
    print(f"| classes circle/square/triangle | {np.bincount(cats, minlength=4)[1:].tolist()} |")
    print(
        f"| COCO area (visible pixels) small/medium/large | {(areas < 32**2).mean():.3f} / "
        f"{((areas >= 32**2) & (areas < 96**2)).mean():.3f} / {(areas >= 96**2).mean():.3f} |"
    )
    q = np.percentile(longest, [0, 10, 50, 90, 100])
    print(f"| longest box side px min/p10/median/p90/max | {' / '.join(f'{v:.0f}' for v in q)} |")
    print(f"| partly occluded (visible < 90 %) | {(vis < 0.9).mean():.3f}, min visible fraction {vis.min():.2f} |")
    print(f"| image sides | {sides.min()}..{sides.max()}, square images {np.mean(sides[:, 0] == sides[:, 1]):.3f} |")


if __name__ == "__main__":
    main()
