"""Core benchmark (a script, not a test): what the explicit face-branch attention and each AM
transform cost next to the fused attention a host runs anyway, at SDXL attn2 shapes, on CPU; and
how many UNet rows per image each preset evaluates, next to the authors' 3 rows on every step.

    python bench/bench_core.py [--repeats 15] [--threads 2] [--overhead-only]

Per-call host overhead (issue #8 item 2): the face branch on tiny tensors, where the time is
almost all dispatch and allocation (what a launch-bound GPU pays on the host), in µs and as a
multiple of one fused SDPA call; transforms are prepared once, as a host's TransformCache does.
Timed with the thread's CPU time, so other processes on a shared machine inflate it less.

A layer's cost without FastFace is text SDPA + fused IP SDPA; with FastFace it is text SDPA +
explicit IP attention (+ transform). Timings are medians over rounds in which every variant runs once, in turn.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastface.method.attention import ip_attention  # noqa: E402
from fastface.method.transforms import TransformCache, transform_for  # noqa: E402
from fastface.presets import PRESETS  # noqa: E402
from fastface.method.schedule import rows_per_image  # noqa: E402

ROWS, D_HEAD, TEXT_TOKENS = 3, 64, 77
SHAPES = [(10, 4096), (20, 1024), (10, 1024), (20, 4096)]  # (heads, L): SDXL 64² and 32² blocks
FACE_TOKENS = (4, 16)


def interleaved_medians(fns: dict, repeats: int, clock=time.perf_counter, inner: int = 1) -> dict:
    """Median ms of each function, timed in turn within every round so that machine drift hits
    all of them alike."""
    for fn in fns.values():
        for _ in range(max(inner, 1)):
            fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            for _ in range(inner):
                fn()
            times[name].append((clock() - t0) / inner)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


OVERHEAD_SHAPE = (3, 1, 16, 8)   # rows, heads, L, d_head: tiny, so dispatch dominates


def bench_overhead(repeats):
    rows, heads, length, d = OVERHEAD_SHAPE
    print(f"\n== per-call host overhead: rows {rows}, heads {heads}, L {length}, d_head {d}, fp32, "
          f"{torch.get_num_threads()} thread(s), thread CPU time; median of {repeats} rounds ==")
    g = torch.Generator().manual_seed(0)
    portrait = TransformCache(PRESETS["Realistic portrait"])
    realistic = TransformCache(PRESETS["Realistic"])
    print(f"{'T':>3} | {'fused SDPA':>10} | " + " | ".join(f"{n:>24}" for n in
          ("explicit, no transform", "scale-power", "softmask+AdaIN (call)", "softmask+AdaIN (per image)")))
    with torch.inference_mode():
        for tokens in FACE_TOKENS:
            q = torch.randn(rows, heads, length, d, generator=g)
            k = torch.randn(rows, heads, tokens, d, generator=g)
            v = torch.randn(rows, heads, tokens, d, generator=g)
            record = lambda *_: None  # noqa: E731  (forces the explicit path without a transform)
            fns = {
                "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
                "explicit": lambda: ip_attention(q, k, v, recorder=record),
                "sp": lambda: ip_attention(q, k, v, realistic.get("down", 1, 4)),
                "sm": lambda: ip_attention(q, k, v, portrait.get("down", 1, 4)),
                "smg": lambda: ip_attention(q, k, v, portrait.get("down", 1, 4, rows)),
            }
            us = {n: ms * 1e3 for n, ms in interleaved_medians(fns, repeats, time.thread_time, inner=50).items()}
            cells = [f"{us[n]:9.1f} µs {us[n] / us['sdpa']:6.2f}×" for n in ("explicit", "sp", "sm", "smg")]
            print(f"{tokens:>3} | {us['sdpa']:7.1f} µs | " + " | ".join(f"{c:>24}" for c in cells))
    print("× = this call / one fused SDPA call (issue #8 asks ≤ 1.8× for scale-power, ≤ 5× for the softmask)")


def bench_attention(repeats):
    transforms = {
        "none": None,
        "scale-power": transform_for(PRESETS["Realistic"], "down", 1, 4),
        "softmask": transform_for(PRESETS["Realistic portrait"], "down", 1, 4),
    }
    print(f"\n== face-branch attention, rows {ROWS}, d_head {D_HEAD}, text tokens {TEXT_TOKENS}, "
          f"fp32, {torch.get_num_threads()} thread(s); median of {repeats} ==")
    print(f"{'heads':>5} {'L':>5} {'T':>3} | {'text ms':>8} {'ip fused':>8} | "
          + " | ".join(f"{name:>11} ms  layer×" for name in transforms))
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for heads, length in SHAPES:
            q = torch.randn(ROWS, heads, length, D_HEAD, generator=g)
            k_txt = torch.randn(ROWS, heads, TEXT_TOKENS, D_HEAD, generator=g)
            v_txt = torch.randn(ROWS, heads, TEXT_TOKENS, D_HEAD, generator=g)
            for tokens in FACE_TOKENS:
                k_ip = torch.randn(ROWS, heads, tokens, D_HEAD, generator=g)
                v_ip = torch.randn(ROWS, heads, tokens, D_HEAD, generator=g)
                fns = {"text": lambda: F.scaled_dot_product_attention(q, k_txt, v_txt),
                       "fused": lambda: F.scaled_dot_product_attention(q, k_ip, v_ip)}
                for name, t in transforms.items():
                    fns[name] = lambda t=t: ip_attention(q, k_ip, v_ip, t)
                ms = interleaved_medians(fns, repeats)
                text, fused = ms["text"], ms["fused"]
                cells = []
                for name in transforms:
                    layer_ratio = (text + ms[name]) / (text + fused)
                    cells.append(f"{ms[name]:11.2f} ms {layer_ratio:7.2f}")
                print(f"{heads:>5} {length:>5} {tokens:>3} | {text:8.2f} {fused:8.2f} | " + " | ".join(cells))
    print("layer× = (text SDPA + explicit IP [+ transform]) / (text SDPA + fused IP SDPA) for one attn2 layer")


def bench_rows():
    print("\n== UNet rows per image (per step, then total) vs the authors' 3 rows on every step ==")
    print(f"{'preset':<20} " + " ".join(f"{n:>2} step(s): per step{'':<12} total/authors" for n in (1, 2, 4, 8)))
    for name, args in PRESETS.items():
        cells = []
        for total in (1, 2, 4, 8):
            rows = rows_per_image(total, args)
            per = "/".join(map(str, rows))
            cells.append(f"{per:<28} {sum(rows):>2}/{3 * total:<2} = {sum(rows) / (3 * total):.2f}")
        print(f"{name:<20} " + "   ".join(cells))
    print("DCG off (Off, *only presets): the WebUI's own CFG rows (cond + uncond) are left as they are.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--overhead-only", action="store_true", help="only the per-call overhead table (1 thread)")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    bench_overhead(max(ns.repeats, 15))
    if ns.overhead_only:
        return
    torch.set_num_threads(ns.threads)
    bench_rows()
    bench_attention(ns.repeats)


if __name__ == "__main__":
    main()
