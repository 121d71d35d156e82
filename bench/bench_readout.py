"""Likeness readout benchmark (a script, not a test): what the readout adds per image.

    python bench/bench_readout.py PACK_FOLDER [--size 1024] [--repeats 10] [--threads 2]

PACK_FOLDER holds the detector and recognition ONNX (e.g. <webui>/models/insightface/models/buffalo_l).
Prints, side by side: loading the pack (once per process), one image with a face (detection at 640
plus the embedding: what the readout costs per image), and one image without a face (all six det
sizes tried, the worst case). The photo is scikit-image's bundled astronaut, resized to --size.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastface.views.likeness import FaceModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pack")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from PIL import Image
    from skimage import data

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((args.size, args.size)))
    blank = np.full_like(photo, 128)
    started = time.perf_counter()
    model = FaceModel.from_folder(args.pack)
    load = time.perf_counter() - started
    model.embed(photo)  # warm-up: sessions per det size are built lazily by some insightface versions
    face, none = [], []
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        t = time.perf_counter()
        found = model.embed(photo)
        face.append(time.perf_counter() - t)
        t = time.perf_counter()
        model.embed(blank)
        none.append(time.perf_counter() - t)
    print(f"pack {args.pack}  providers {model.providers}  det sizes {[s[0] for s in model.det_sizes]}")
    print(f"image {args.size}x{args.size}, {args.repeats} repeats, medians:")
    print(f"  load pack (once per process)   {load:7.3f} s")
    print(f"  image with a face              {statistics.median(face):7.3f} s   (face found: {found is not None})")
    print(f"  image without a face           {statistics.median(none):7.3f} s   (every det size tried)")


if __name__ == "__main__":
    main()
