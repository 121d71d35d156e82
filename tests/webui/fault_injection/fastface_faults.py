"""Out-of-memory fault injection for FastFace's opt-in real-WebUI tests (tests/webui/test_real_faults.py).

Part of FastFace's test tree, not of FastFace: the lead copies this folder into the WebUI's
`extensions/` beside FastFace for those tests only. Nothing in `fastface/` knows it; it wraps
things from the outside for one job and undoes the wrapping in `postprocess` and at the next
job's start (a job that raised skips `postprocess`).

A spec is a comma-separated list of `point:N` (raise `torch.OutOfMemoryError` on the N-th call of
that point in the job):

    face:N       FastFace's face branch: `ip_attention` as FastFace's modules call it (A1111 and Forge
                 attention, PuLID, the preview's recording path)
    readout:N    the likeness readout's preparation (`fastface.hosts.readout._prepare`, the job's
                 first image: FastFace's face models and reference) — so N is 1
    dcg:N        a UNet call with more rows than the WebUI's own (batch × 2 at CFG > 1: DCG's
                 id-only rows); use CFG > 1 and no AND prompts
    host_unet:N  a UNet call with the WebUI's own rows or fewer (the WebUI's own work)
    vae:N        the VAE decode (`modules.processing.decode_first_stage`, the WebUI's own work)

Duck-typed on A1111 and the Forge family: the UNet is `p.sd_model.forge_objects.unet.model.
diffusion_model` (Forge) or `p.sd_model.model.diffusion_model` (A1111); a forward pre-hook raises.
What fired goes to the infotext as `FastFace fault` (e.g. "face:2 raised").
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

import torch

OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
POINTS = ("face", "readout", "dcg", "host_unet", "vae")
INFOTEXT_KEY = "FastFace fault"
FACE_MODULES = ("fastface.hosts.a1111.attention", "fastface.hosts.a1111.pulid", "fastface.hosts.forge.attention",
                "fastface.hosts.recording")


def parse(spec: str) -> dict[str, int]:
    """'face:2, dcg:1' → {'face': 2, 'dcg': 1}; ValueError for anything else."""
    wanted: dict[str, int] = {}
    for item in (spec or "").replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        point, _, nth = item.partition(":")
        if point not in POINTS or not nth.strip().isdigit() or int(nth) < 1:
            raise ValueError(f"fault spec {item!r}: expected point:N with point in {POINTS}")
        wanted[point] = int(nth)
    return wanted


class Faults:
    """The faults of one job: counters, what fired, and how to undo every wrapper."""

    live: "list[Faults]" = []   # not yet undone (a job that raised skips postprocess)

    def __init__(self, wanted: dict[str, int]):
        self.wanted = wanted
        self.calls = {point: 0 for point in POINTS}
        self.fired: list[str] = []
        self._undo: list[Callable[[], None]] = []
        Faults.live.append(self)

    def tick(self, point: str) -> None:
        """One call of `point`: raise on the wanted one."""
        self.calls[point] += 1
        if self.wanted.get(point) == self.calls[point]:
            self.fired.append(f"{point}:{self.calls[point]} raised")
            print(f"[FastFace fault injection] raising out of memory at {point}:{self.calls[point]}")
            raise OOM(f"CUDA out of memory (injected by the FastFace fault injection at {point}:{self.calls[point]})")

    def wrap(self, owner, name: str, point: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            self.tick(point)
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)
        self._undo.append(lambda: setattr(owner, name, original))

    def summary(self) -> Optional[str]:
        return ", ".join(self.fired) or ("none fired (" + ", ".join(f"{k}:{v}" for k, v in self.wanted.items()) + ")")

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()
        if self in Faults.live:
            Faults.live.remove(self)

    @classmethod
    def undo_all(cls) -> None:
        for faults in list(cls.live):
            faults.undo()


def unet_module(p) -> Optional[torch.nn.Module]:
    forge_objects = getattr(getattr(p, "sd_model", None), "forge_objects", None)
    if forge_objects is not None:
        module = getattr(getattr(getattr(forge_objects, "unet", None), "model", None), "diffusion_model", None)
    else:
        module = getattr(getattr(getattr(p, "sd_model", None), "model", None), "diffusion_model", None)
    return module if isinstance(module, torch.nn.Module) else None


def install(p, spec: str) -> Optional[Faults]:
    """Script.process: undo any earlier job's wrappers, then wrap this job's points."""
    Faults.undo_all()
    wanted = parse(spec)
    if not wanted:
        return None
    faults = Faults(wanted)
    if "face" in wanted:
        for name in FACE_MODULES:
            module = sys.modules.get(name)
            if module is not None and callable(getattr(module, "ip_attention", None)):
                faults.wrap(module, "ip_attention", "face")
    if "readout" in wanted:
        module = sys.modules.get("fastface.hosts.readout")
        if module is not None:
            faults.wrap(module, "_prepare", "readout")
    if "vae" in wanted:
        module = sys.modules.get("modules.processing")
        if module is not None:
            faults.wrap(module, "decode_first_stage", "vae")
    if "dcg" in wanted or "host_unet" in wanted:
        unet = unet_module(p)
        if unet is not None:
            own_rows = max(int(getattr(p, "batch_size", 1) or 1), 1) * 2   # cond + uncond per image

            def hook(_module, args, kwargs):
                x = args[0] if args else kwargs.get("x")
                if hasattr(x, "shape"):
                    faults.tick("dcg" if int(x.shape[0]) > own_rows else "host_unet")

            faults._undo.append(unet.register_forward_pre_hook(hook, with_kwargs=True).remove)
    p.extra_generation_params[INFOTEXT_KEY] = lambda **_: faults.summary()
    return faults


def finish(p, faults: Optional[Faults]) -> None:
    """Script.postprocess: the final infotext value (the API's `info` serialises it), then undo."""
    if faults is not None:
        p.extra_generation_params[INFOTEXT_KEY] = faults.summary()
    Faults.undo_all()
