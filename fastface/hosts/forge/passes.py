"""Forge: the entry points the script calls per pass and job, and the `on_cfg_denoiser` callback."""
from __future__ import annotations

import torch

from ..common import Job, guard_denoiser, is_timestep_sampler, log, no_face_note, note_units, track_timestep_count
from ..readout import unapplied_units_note
from .attention import clone_unet
from .dcg import install_dcg
from .internals import attn2_patches, calc_cond_uncond_batch
from .negative import encode_negative, negative_at
from .state import ForgePass, sampler_step


def on_cfg_denoiser(params) -> None:
    """Registered once at import: the sampler step of this model call, and the negative
    conditioning at CFG 1. A no-op for jobs that are not running a Forge pass."""
    denoiser = getattr(params, "denoiser", None)
    job = getattr(getattr(denoiser, "p", None), "fastface_job", None)
    if job is None or not job.active:
        return
    st = job.current_pass
    if not isinstance(st, ForgePass):
        return
    try:
        step, total = sampler_step(st, denoiser)
        st.total = total
        # DDIM CFG++ renoises with the denoiser's uncond prediction (sd_samplers_cfg_denoiser.py
        # L201-202 on Forge 2, L154-155 on Neo): it must stay the real uncond on every step
        st.renoise_uncond = bool(getattr(denoiser, "need_last_noise_uncond", False))
        if st.negative is not None and getattr(params, "text_uncond", None) is None:
            params.text_uncond = negative_at(st, denoiser)
    except Exception as exc:
        job.fail("Forge on_cfg_denoiser", exc)


def register_callbacks(script_callbacks) -> None:
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser)


# -- entry points called by the script ---------------------------------------------------------
def _install_step_tracking(job: Job, p, st: ForgePass) -> None:
    sampler = getattr(p, "sampler", None)
    original = getattr(sampler, "callback_state", None)
    if sampler is None or not callable(original):
        job.note("this sampler has no step callback: steps are counted from model calls")
        return
    st.sampler = sampler

    def callback_state(d):
        if job.current_pass is st:
            try:
                st.on_callback(d.get("i", 0))
            except Exception as exc:  # never fail the generation
                job.fail("Forge step callback", exc)
        return original(d)

    job.patches.setattr(sampler, "callback_state", callback_state)
    if is_timestep_sampler(sampler):   # DDIM / PLMS: one step fewer than the denoiser's `steps`
        track_timestep_count(job.patches, sampler, st)


def _install_row_counter(job: Job, unet) -> None:
    module = getattr(getattr(unet, "model", None), "diffusion_model", None)
    if not isinstance(module, torch.nn.Module):
        return

    def count(_module, args, kwargs):
        st = job.current_pass
        if isinstance(st, ForgePass) and job.active:
            x = args[0] if args else kwargs.get("x")
            if hasattr(x, "shape"):
                job.count_unet_call(st.index, st.step, int(x.shape[0]))   # shape: Python ints

    handle = module.register_forward_pre_hook(count, with_kwargs=True)
    job.patches.on_undo(handle.remove)


def start_pass(job: Job, p) -> None:
    """process_before_every_sampling (after the built-in ControlNet): patch this pass's UNet.

    Idempotent: Forge 2 calls it twice for the hires pass (the first result is thrown away); a
    restart of a pass before any model call keeps the pass index."""
    try:
        _start_pass(job, p)
    except Exception as exc:  # never into Forge: stock sampling for the rest of the job
        job.current_pass = None
        job.fail("Forge set-up", exc)


def _start_pass(job: Job, p) -> None:
    is_hires = bool(getattr(p, "is_hr_pass", False))
    previous = job.current_pass
    job.current_pass = None
    if is_hires and not job.args.hires:
        job.note("hires pass left to the WebUI (FastFace's hires option is off)")
        return
    objects = p.sd_model.forge_objects
    source = objects.unet
    restart = isinstance(previous, ForgePass) and previous.is_hires == is_hires and previous.calls == 0
    if restart:
        index = previous.index
    else:
        index = job.passes
        job.passes += 1
    st = ForgePass(index=index, is_hires=is_hires)
    unet = clone_unet(source, job)
    patches = [v for v in attn2_patches(unet.model_options).values() if getattr(v, "_fastface_wrapper", False)]
    st.face = any(v.has_face() for v in patches)
    note_units(job, dict.fromkeys(kind for v in patches for kind in v.kinds()))
    for patch in patches:   # measured here, at set-up, so that no layer call reads a tensor for it
        if patch.has_face():
            patch.weight_power()
    if not st.face:
        # no IP-Adapter patch at all although a unit asked for one: Forge logged an error and
        # dropped the unit (Forge Neo's CLIP-Vision bug, no insightface)
        dropped = None if patches else unapplied_units_note(p, job.args)
        job.note(dropped or no_face_note("Forge's ControlNet", job.args))
    if job.args.dcg:
        st.calc = calc_cond_uncond_batch()
        if st.calc is None:
            job.note("Forge's calc_cond_uncond_batch was not found: DCG is off")
        elif install_dcg(job, p, st, unet):
            uc = getattr(p, "hr_uc" if is_hires else "uc", "missing")
            if uc is None:   # CFG 1: Forge built no negative conditioning at all
                st.negative = encode_negative(p, is_hires)
                # the normal case for distilled models: logged, not worth an infotext note
                log.info("CFG 1: FastFace encoded the negative prompt for DCG")
    _install_step_tracking(job, p, st)
    den = getattr(getattr(p, "sampler", None), "model_wrap_cfg", None)
    if den is not None:   # out of memory in FastFace's work: the step again, Forge's way (its own UNet patcher)
        guard_denoiser(job, job.patches, den, st)
    if "rows" not in job.installed:
        job.installed.add("rows")
        _install_row_counter(job, unet)
    job.layer_part = None
    job.patches.setattr(objects, "unet", unet)
    job.current_pass = st


def end_job(job: Job, p) -> None:
    job.current_pass = None
    if job.patches is not None:
        job.patches.undo()
