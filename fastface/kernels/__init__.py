"""The fused Triton face branch: `method.attention.ip_attention` in one launch (no transform,
scale-power) or three (softmask), for CUDA.

    launch        the host side: checks the call, sizes the blocks and launches; `available(device)`
    triton_face   the `@triton.jit` kernels (imported lazily by `launch`, and only with Triton)

Optional: without Triton (or off CUDA) this package imports, `launch.available()` is False and
callers keep the torch path. Imports: torch, Triton, and `fastface.method.transforms` (the
transforms' types and constants they implement) — nothing else of FastFace.
"""
