"""The paper's method, in pure torch: what FastFace computes, independent of any WebUI.

    schedule     per-step α/β, the softmask's (d, s) and which UNet branches a step needs
    guidance     decoupled CFG (DCG) in ε- and x₀-space, with the std rescale φ
    transforms   the AM transforms of the face attention map (ScalePower, Softmask), their torch
                 implementations, `transform_for` and the per-job `TransformCache`
    attention    the face branch of the decoupled cross-attention computed explicitly (the torch
                 path, the fused kernels' reference and fall-back) and the per-job `KernelSwitch`
    blocks       the UNet part (down / mid / up) of an attention layer from any host's naming

Imports: torch, the schema (`fastface.config`) and, lazily in `attention` for CUDA, the fused
kernels (`fastface.kernels`). Never a WebUI, gradio or `fastface.hosts`.
"""
