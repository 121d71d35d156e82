"""FastFace: training-free identity preservation for few-step (distilled) diffusion.

The package root is host-independent (torch and numpy only); `fastface.hosts` holds the WebUI
adapters. Modules:
    config     the one schema, `FastFaceArgs`, and its validation
    presets    named presets
    schedule   per-step α/β, softmask (d, s) and the branches a step needs
    guidance   decoupled CFG (DCG) in ε- and x₀-space
    attention  explicit face-branch attention and the AM transforms
    infotext   the `FastFace` infotext value
    blocks     UNet part of an attention layer from any host's naming
"""
__version__ = "0.1.0"
