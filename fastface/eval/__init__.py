"""`fastface-eval`: the paper's ID table on your own models, through a running WebUI's HTTP API.

    fastface-eval --config eval.toml        (or: python -m fastface.eval --config eval.toml)

It generates identities × prompts × presets × seeds with the FaceID unit and the checkpoint of
the config (one image per request), reads each image's ID from the `FastFace ID` infotext the
server's likeness readout wrote (or computes it here when the config names `face_models`), and
writes under the output folder:

    images/<identity>/<preset>/<prompt#>_<prompt>_s<seed>.png   every image, with its infotext
    results.csv        one row per image (identity, prompt, style or realistic, preset, seed, ID,
                       face found, seconds, server)
    summary.md/.json   mean ID per preset with a 95 % bootstrap interval, FFC, Δ vs Off (paired),
                       seconds per image, CLIP-T when available
    chart.png          mean ID per preset with the intervals
    contact_sheet.png  identities × presets, the ID under each image

Several servers: one job in flight per server; a server that stops answering is dropped and its
job goes to the others. A rerun with the same config resumes: images already on disk (and their
rows) are kept and not generated again. Problems are reported in one line naming the file, the
field or the item, never as a traceback (`--debug` shows it).

Modules, each importing only those listed above it:
    config     the config file (JSON or TOML), its fields and checks; EvalError and the exit codes
    grid       prompts, identity photos, the jobs (identities × prompts × presets × seeds), safe file names
    client     the WebUI's HTTP API: the txt2img payload, the server check, one generation, the ID readout
    results    results.csv, appended one row at a time and read back on resume
    stats      bootstrap intervals, the per-preset summary and summary.md
    pictures   chart.png and contact_sheet.png (Pillow)
    metrics    IDs and CLIP-T computed here: a local face_models pack, a local CLIP folder
    run        the run loop (a worker per server, resume, the outputs) and `main`, the command line
    __main__   `python -m fastface.eval`

What it may import: the standard library, numpy, and lazily (when a feature needs it) Pillow, tqdm,
torch/transformers (CLIP-T) and `fastface.views.likeness` (face_models); of the package root only
the schema (`fastface.config`, `fastface.presets`). Never `fastface.hosts`, never a WebUI module or
gradio: the command talks to the WebUI over HTTP only.
"""
from .run import main  # the `fastface-eval` console script: fastface.eval:main

__all__ = ["main"]
