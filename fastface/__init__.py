"""FastFace: training-free identity preservation for few-step (distilled) diffusion.

The schema sits at the top; every subpackage is one part of the architecture:

    config     the one schema, `FastFaceArgs`: fields, defaults, ranges, keys, tooltips, coercion
    presets    the named presets, and raw values (UI, API) read on top of the preset they name
    infotext   the `FastFace` infotext value, written and read back
    version    which FastFace this is: the git commit of its folder and the start-up line
    method/    the paper's math in torch: schedules, DCG, the AM transforms, the face branch
    kernels/   the fused Triton face branch (optional, CUDA)
    views/     the attention-map previews and the likeness (ID) metric
    eval/      `fastface-eval`: the paper's ID table on your own models, over HTTP
    hosts/     the only code that touches WebUI or IP-Adapter internals (A1111, Forge)

Import direction (checked by tests/test_layout.py): config ← presets ← infotext; `version`
imports nothing of FastFace; `method`, `kernels`, `views` and `eval` import the schema and each
other as their docstrings say, never `hosts`, a WebUI module or gradio; `hosts` imports anything.
"""
__version__ = "0.2.0"   # pyproject.toml, metadata.ini and CHANGELOG.md say the same (tests/test_version.py)
