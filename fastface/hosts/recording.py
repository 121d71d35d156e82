""""Show face attention", the part both hosts share: the per-job `Recording`, the face branch while
recording, the maps where the branch is not materialised, and the previews added after the job.

Only active when the job's `show_attention` is on (`job.recording` is a `Recording`); otherwise
every entry point returns at once and nothing is installed, so recording off costs nothing.

What the hosts call (small call sites, so the host modules stay readable):
* `begin(job)` in the script's `process`;
* `start_pass(job, p, host_rows)` after the host patched a sampling pass (through the host's
  `preview.start_recording_pass`): the batch's first image index, then the host's own row
  bookkeeping — A1111 (`hosts/a1111/preview.py`): a UNet forward pre-hook that tracks which rows of
  the denoiser batch a call holds; Forge (`hosts/forge/preview.py`): a wrapper around the pass's
  id-only evaluation so those rows are not recorded;
* `face_attention(...)` in place of `ip_attention` while recording, with the host's recorder for
  the call, and `record_maps(...)` where a layer is left to the host's own (fused) code;
* `finish(job, p, processed)` in the script's `postprocess`: one preview per generated image,
  appended the way ControlNet adds its detected maps — A1111: `processed.images` (after the
  generated images, so not saved, not in the grid, no infotext of their own); Forge:
  `processed.extra_images` (Forge's list for exactly this, which its UI and API append); reForge,
  whose API returns `processed.images` only: `extra_images` for its UI, `processed.images` (as on
  A1111) for an API request.

Recorded rows: the *full* branch (prompt + face) of every image, i.e. what the image is made of;
which rows of a UNet call those are is the host's to say (its `preview.recorder`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..method.attention import face_probs_token_major, ip_attention, transform_token_major
from ..views.attnmaps import AttentionRecorder, token_layout
from .common import IN_PREVIEW, Job, is_out_of_memory, log
from .kinds import BY_NAME, FACEID

PASS_NAMES = {0: "base pass", 1: "hires pass"}


@dataclass
class Recording:
    """Per job: the recorder plus the host's row bookkeeping."""

    recorder: AttentionRecorder = field(default_factory=AttentionRecorder)
    adapter: Any = None              # id() of the one identity adapter recorded (the first one seen)
    kind: str = FACEID.name          # its kind (`hosts.kinds`), which lays out the preview
    plus: bool = False
    v2: Optional[bool] = None
    first_image: int = 0             # job-wide index of this batch's first image
    images: int = 1                  # images per batch
    # A1111: rows of the denoiser call now running
    full_rows: int = 0               # denoiser rows [0, full_rows) are the full branch, one per image
    offset: int = 0                  # denoiser rows handed to UNet calls so far
    call_offset: int = 0             # denoiser row of this UNet call's row 0
    latent_hw: tuple = (0, 0)
    # Forge
    in_id_branch: bool = False       # inside FastFace's id-only evaluation
    warned: set = field(default_factory=set)

    @property
    def pulid(self) -> bool:
        """The recorded adapter is a PuLID unit (10 id tokens)."""
        return self.kind == "pulid"


def begin(job: Job) -> None:
    job.recording = Recording() if getattr(job.args, "show_attention", False) else None
    if job.recording is not None:
        for index, name in PASS_NAMES.items():
            job.recording.recorder.name_pass(index, name)


def pass_index(st) -> int:
    return 1 if getattr(st, "is_hires", False) else 0


def start_pass(job: Job, p, host_rows: Optional[Callable] = None) -> None:
    """After the host's start_pass: the batch's position in the job, then `host_rows(job, rec, st, p)`,
    the host's row bookkeeping. Never raises (a problem stops the recording)."""
    try:
        rec = getattr(job, "recording", None)
        st = job.current_pass
        if rec is None or st is None:
            return
        rec.images = max(int(getattr(p, "batch_size", 1) or 1), 1)
        rec.first_image = int(getattr(p, "iteration", 0) or 0) * rec.images
        if host_rows is not None:
            host_rows(job, rec, st, p)
    except Exception as exc:
        give_up(job, exc)


def adapter_ok(rec: Recording, adapter, plus: bool, v2: Optional[bool], kind: str = FACEID.name) -> bool:
    """Record one identity adapter per job (the first seen); remember what kind it is (`kind`: its
    `hosts.kinds` name; `plus` / `v2`: the FaceID-Plus flags the host has)."""
    if rec.adapter is None:
        rec.adapter, rec.plus, rec.v2, rec.kind = id(adapter), plus, v2, kind
    return rec.adapter == id(adapter)


def give_up(job: Job, exc: BaseException) -> None:
    """A recording error stops the recording for the job (one log line); the images are untouched.
    Out of memory is FastFace's memory: FastFace turns off (`Job.fail_in_call`)."""
    if is_out_of_memory(exc):
        job.fail_in_call("Show face attention", exc, IN_PREVIEW)
        return
    if getattr(job, "recording", None) is not None:
        log.error("Show face attention: recording stopped (%s: %s)", type(exc).__name__, exc)
        job.recording = None


def face_attention(q, k, v, transform, *, sink=0, kernels=None, recorder=None):
    """`ip_attention` while recording, with exactly the output the job gets without recording.

    Normally the maps come from the call itself (`recorder=`: the torch path, which is also the
    path without recording). Where the fused kernels would run (kernels enabled and
    `kernels.launch.available`: CUDA with Triton), the recorder would force the torch path and change
    the output by rounding; there the output comes from the kernels as without recording and the
    maps are computed beside it."""
    if recorder is not None and kernels is not None and kernels.enabled and _kernels_run(q):
        out = ip_attention(q, k, v, transform, sink=sink, kernels=kernels)
        record_maps(recorder, q, k, transform, sink=sink)
        return out
    return ip_attention(q, k, v, transform, sink=sink, recorder=recorder, kernels=kernels)


def _kernels_run(q) -> bool:
    try:
        from ..kernels.launch import available
    except Exception:  # the kernel module is optional
        return False
    return bool(available(q.device))


def record_maps(recorder, query: torch.Tensor, ip_k: torch.Tensor, transform=None, *, sink: int = 0) -> None:
    """Where the face branch's map is not materialised (the host's own fused code, or FastFace's
    fused kernels): the map from the same q and k (and the transform, if any), for the preview
    only; the output is not touched. `sink`: zero tokens in the denominator (PuLID)."""
    if recorder is None:
        return
    with torch.no_grad():   # the maps as the torch path of `ip_attention` makes them
        probs = face_probs_token_major(query, ip_k, sink)                 # (B, h, T, L)
        mapped = None if transform is None else transform_token_major(transform, probs, sink).transpose(-1, -2)
        recorder(probs.transpose(-1, -2), mapped)


# -- after the job ------------------------------------------------------------------------------------
def finish(job: Job, p, processed, extra_images_reach_api: bool = True) -> int:
    """Render one preview per generated image and append it as an extra image; returns how many.
    `extra_images_reach_api`: whether the WebUI's API answers with `processed.extra_images` (Forge 2,
    Forge Classic) — where it does not (reForge), an API request gets the previews after the
    generated images in `processed.images`, as on A1111. Never raises (a failed preview is logged,
    the generation is untouched)."""
    rec = getattr(job, "recording", None)
    if rec is None or processed is None:
        return 0
    try:
        return _finish(rec, processed, extra_images_reach_api or not getattr(p, "is_api", False))
    except Exception as exc:  # never fail the generation for a preview
        log.error("Show face attention: no preview (%s: %s)", type(exc).__name__, exc)
        return 0
    finally:
        job.recording = None   # free the maps


def _finish(rec: Recording, processed, extra_images_shown: bool = True) -> int:
    from ..views.attnpreview import render_grid  # PIL: imported only when previews are drawn

    maps = rec.recorder.images()
    if not maps:
        log.info("Show face attention: no face attention was recorded (no identity-adapter unit?)")
        return 0
    images = list(getattr(processed, "images", None) or [])
    first = int(getattr(processed, "index_of_first_image", 0) or 0)
    infotexts = getattr(processed, "infotexts", None)
    generated = images[first: len(infotexts)] if infotexts else images[first:]
    extra = getattr(processed, "extra_images", None)
    target = extra if isinstance(extra, list) and extra_images_shown else processed.images
    tokens = maps[0].tokens
    preview = BY_NAME[rec.kind].preview
    layout = token_layout(tokens, plus=rec.plus, v2=rec.v2, portrait=not rec.plus and tokens % 16 == 0,
                          layout=preview)
    added = 0
    for image_maps in maps:
        if image_maps.image < len(generated):
            target.append(render_grid(generated[image_maps.image], image_maps, layout))
            added += 1
    if rec.recorder.skipped:
        log.info("Show face attention: %d layer call(s) of an unexpected shape were not shown", rec.recorder.skipped)
    return added
