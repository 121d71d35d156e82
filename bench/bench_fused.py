"""Fused Triton face branch vs the torch path, per attn2 call, on CUDA (SDXL attn2 shapes, fp16).

    python bench/bench_fused.py            # the table (+ errors and CUDA-graph checks), < 1 min on an H200
    python bench/bench_fused.py --sweep    # correctness only, over more shapes / dtypes / transforms
    python bench/bench_fused.py --profile  # GPU µs per fused kernel (torch.profiler)

For every shape (rows 3 = DCG's cond / id / uncond, heads 10 at L 4096 and 20 at L 1024 — SDXL's two
attention levels at 1024² —, T 4 and 16 face tokens, d 64) and transform (none, scale-power,
softmask + AdaIN as in the "Realistic portrait" preset):
  * eager µs per call, torch path vs fused, interleaved, median of `--reps` runs of `--calls` calls
    each timed with CUDA events (host launch cost included: that is what an eager UNet pays);
  * µs per call replaying a CUDA graph of `--calls` calls (GPU work only), where the path captures;
  * max |fused − torch| (and relative to max |torch|);
  * CUDA-graph capture: capture + replay equal to eager, for both paths (the torch path's softmask
    synchronises with the host on today's main and cannot be captured; that is reported, not fatal).
On a machine without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastface.kernels import launch as fused_face  # noqa: E402
from fastface.method.attention import ip_attention  # noqa: E402
from fastface.method.transforms import ScalePower, Softmask  # noqa: E402

TRANSFORMS = {
    "none": None,
    "scale-power": ScalePower(s=1.55, p=1.3, clamp_max=10.0),
    "softmask+adain": Softmask(quantile=0.65, d=5.0, s=1.55, invert_first=True, clamp_max=10.0, adain=0.7),
}
SHAPES = [(3, 10, 4096, 4), (3, 10, 4096, 16), (3, 20, 1024, 4), (3, 20, 1024, 16)]  # rows, heads, L, T
D_HEAD = 64


def make_inputs(rows, heads, length, tokens, d=D_HEAD, dtype=torch.float16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    # hosts hand q over as a (B, L, H, d) → (B, H, L, d) view; keep that layout
    q = torch.randn(rows, length, heads, d, device="cuda", generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(rows, heads, tokens, d, device="cuda", generator=g).to(dtype)
    v = torch.randn(rows, heads, tokens, d, device="cuda", generator=g).to(dtype)
    return q, k, v


def torch_path(q, k, v, t):
    return ip_attention(q, k, v, t)


def fused_path(q, k, v, t):
    return fused_face.face_attention(q, k, v, t)


def time_eager(fns, args, calls, reps):
    """Median µs per call of each fn, the fns interleaved within every repetition."""
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn(*args)
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) * 1e3 / calls)
    return {name: statistics.median(ts) for name, ts in times.items()}


def capture(fn, args, calls):
    """A CUDA graph of `calls` calls of fn (warmed up on a side stream first) and its last output."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            out = fn(*args)
    return graph, out


def time_graph(graph, reps):
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def graph_check(fn, args, calls, reps):
    """(µs per call in a graph or None, 'ok' / why not)."""
    try:
        eager = fn(*args)
        graph, out = capture(fn, args, calls)
        graph.replay()
        torch.cuda.synchronize()
        if not torch.equal(out, eager):
            return None, f"replay differs from eager by {(out.float() - eager.float()).abs().max().item():.3g}"
        return time_graph(graph, reps) / calls, "ok"
    except Exception as exc:  # capture refused (a host sync, a CPU tensor): report it, go on
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        return None, f"not capturable: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"


def bench(args):
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {__import__('triton').__version__}, fp16, d {D_HEAD}, "
          f"{args.reps} reps × {args.calls} calls, medians, µs per call")
    header = (f"{'rows×heads×L×T':>16} {'transform':>15} | {'torch':>8} {'fused':>8} {'ratio':>6} | "
              f"{'graph torch':>11} {'graph fused':>11} | {'max|err|':>9} {'rel':>8} | capture")
    print(header)
    print("-" * len(header))
    failures = []
    deferred = []
    for rows, heads, length, tokens in SHAPES:
        q, k, v = make_inputs(rows, heads, length, tokens)
        for name, t in TRANSFORMS.items():
            ref = torch_path(q, k, v, t)
            got = fused_path(q, k, v, t)   # compiles on first use
            torch.cuda.synchronize()
            err = (got.float() - ref.float()).abs().max().item()
            rel = err / max(ref.float().abs().max().item(), 1e-12)
            if not err <= 2e-3 + 1e-3 * ref.float().abs().max().item():
                failures.append(f"{rows}×{heads}×{length}×{tokens} {name}: max|err| {err:.3g}")
            eager = time_eager({"torch": torch_path, "fused": fused_path}, (q, k, v, t), args.calls, args.reps)
            g_fused, cap_fused = graph_check(fused_path, (q, k, v, t), args.calls, args.reps)
            if cap_fused != "ok":
                failures.append(f"{rows}×{heads}×{length}×{tokens} {name}: fused {cap_fused}")
            deferred.append((rows, heads, length, tokens, name, t, eager, g_fused, cap_fused, err, rel))
    # the torch path's graph checks last: a refused capture can leave the stream in a poor state
    for rows, heads, length, tokens, name, t, eager, g_fused, cap_fused, err, rel in deferred:
        q, k, v = make_inputs(rows, heads, length, tokens)
        g_torch, cap_torch = graph_check(torch_path, (q, k, v, t), args.calls, args.reps)
        fmt = lambda x: f"{x:11.1f}" if x is not None else f"{'—':>11}"  # noqa: E731
        print(f"{f'{rows}×{heads}×{length}×{tokens}':>16} {name:>15} | {eager['torch']:8.1f} {eager['fused']:8.1f} "
              f"{eager['torch'] / eager['fused']:5.1f}× | {fmt(g_torch)} {fmt(g_fused)} | {err:9.2e} {rel:8.1e} | "
              f"fused {cap_fused}; torch {cap_torch}")
    return failures


def sweep():
    """Fused vs torch over more shapes, dtypes and transforms (correctness only)."""
    tol = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 1e-3), torch.bfloat16: (2e-3, 8e-3)}
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    cases = [  # rows, heads, L, T, d, dtypes (few, to keep Triton's compiles few)
        (3, 10, 4096, 4, 64, (f16, f32)), (3, 20, 1024, 16, 64, (f16, bf16)), (2, 8, 4096, 4, 40, (f16,)),
        (2, 8, 1024, 16, 80, (f16, f32)), (2, 8, 256, 4, 160, (f16,)), (6, 5, 77, 1, 64, (f32,)),
        (2, 2, 9216, 4, 40, (f16,)), (4, 10, 1000, 7, 64, (f16,))]
    transforms = dict(TRANSFORMS)
    transforms["scale-power+out-adain"] = ScalePower(1.5, 1.3, 10.0, output_adain=0.7)
    transforms["softmask-P2-noinvert"] = Softmask(0.65, 7.5, 1.0, invert_first=False, adain=1.0, groups=2)
    transforms["softmask-P1-adain0.5"] = Softmask(0.3, 5.0, 1.55, invert_first=True, adain=0.5, groups=1)
    failures, worst = [], {}
    for rows, heads, length, tokens, d, dtypes in cases:
        for dtype in dtypes:
            q, k, v = make_inputs(rows, heads, length, tokens, d=d, dtype=dtype, seed=length + tokens)
            q = q * torch.linspace(0.3, 3.0, rows, device="cuda", dtype=dtype).view(rows, 1, 1, 1)
            for name, t in transforms.items():
                ref_t = t
                if isinstance(t, Softmask) and isinstance(t.groups, int):
                    import dataclasses
                    ref_t = dataclasses.replace(t, groups=torch.arange(rows, device="cuda") % t.groups)
                ref = ip_attention(q, k, v, ref_t).float()
                got = fused_face.face_attention(q, k, v, t).float()
                atol, rtol = tol[dtype]
                excess = ((got - ref).abs() - (atol + rtol * ref.abs())).max().item()
                err = (got - ref).abs().max().item()
                key = (dtype, name)
                worst[key] = max(worst.get(key, 0.0), err)
                if excess > 0 or not torch.isfinite(got).all():
                    failures.append(f"{rows}×{heads}×{length}×{tokens}×{d} {dtype} {name}: max|err| {err:.3g}")
    for (dtype, name), err in sorted(worst.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        print(f"sweep {str(dtype):>15} {name:>22}: max|fused − torch| {err:.2e}")
    return failures


def profile(args):
    """GPU time per kernel of the fused path (torch.profiler) at SDXL's L = 4096, for the default
    blocks and a few alternatives (block_l: queries per program; ways / warps of the quantile search)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    variants = {"none": [{}, {"block_l": 32}, {"block_l": 128}],
                "scale-power": [{}],
                "softmask+adain": [{}, {"block_l": 32}, {"search_ways": 8}, {"search_ways": 2},
                                   {"stats_warps": 8}]}
    for tokens in (4, 16):
        q, k, v = make_inputs(3, 10, 4096, tokens)
        for name, t in TRANSFORMS.items():
            for kw in variants[name]:
                fn = lambda: fused_face.face_attention(q, k, v, t, **kw)  # noqa: E731
                err = (fn().float() - ip_attention(q, k, v, t).float()).abs().max().item()
                torch.cuda.synchronize()
                with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(args.calls):
                        fn()
                    torch.cuda.synchronize()
                rows = [(e.key, e.device_time_total / e.count) for e in prof.key_averages()
                        if e.count and e.key.endswith("_kernel")]
                total = sum(us for _, us in rows)
                line = ", ".join(f"{key} {us:.1f}" for key, us in sorted(rows, key=lambda r: -r[1]))
                print(f"profile 3×10×4096×{tokens} {name:>14} {str(kw or 'default'):>22}: {total:6.1f} µs = {line}"
                      f" (max|err| {err:.2e})")
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per timed run")
    parser.add_argument("--reps", type=int, default=15, help="timed runs per path (median)")
    parser.add_argument("--sweep", action="store_true", help="correctness over more shapes, then exit")
    parser.add_argument("--profile", action="store_true", help="GPU µs per fused kernel, then exit")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_fused: needs CUDA (the fused face branch is a CUDA path); nothing to measure here.")
        return 0
    if not fused_face.available("cuda"):
        print("bench_fused: Triton is not importable here; the fused face branch is unavailable.")
        return 0
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False  # the torch path's fp32 matmuls stay fp32
    failures = sweep() if args.sweep else profile(args) if args.profile else bench(args)
    print(f"{'FAILURES' if failures else 'all checks passed'} ({time.perf_counter() - started:.1f} s)")
    for line in failures:
        print("  " + line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
