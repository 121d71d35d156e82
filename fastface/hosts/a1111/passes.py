"""A1111: the entry points the script calls per pass and job."""
from __future__ import annotations

from ..common import (Job, PatchSet, guard_denoiser, is_timestep_denoiser, is_timestep_sampler, no_face_note,
                      note_units, track_timestep_count)
from ..readout import unapplied_units_note
from . import pulid
from .attention import identity_kind, install_attention
from .controlnet import adapter_kind, ip_adapters, is_pulid
from .dcg import combine
from .state import PassState


def _install_row_counter(job: Job, p, patches: PatchSet) -> None:
    unet = p.sd_model.model.diffusion_model

    def count(_module, inputs):
        st = job.current_pass
        if st is not None and inputs and hasattr(inputs[0], "shape"):
            job.count_unet_call(st.index, st.step, int(inputs[0].shape[0]))   # shape: Python ints

    patches.on_undo(unet.register_forward_pre_hook(count).remove)


def _note_units(job: Job, adapters) -> None:
    """The identity units the kind table names in a note, and the PuLID mode, once per job
    (sd-webui-controlnet does not write it to the infotext)."""
    note_units(job, [adapter_kind(a) for a in adapters])
    for adapter in adapters:
        if not is_pulid(adapter):
            continue
        setting = pulid.setting_of(adapter)
        if setting is None:
            job.note("a PuLID unit with a setting FastFace does not know is left to sd-webui-controlnet")
        else:
            job.note(f"PuLID unit: mode {pulid.mode_name(setting)} ({setting.num_zero} zero tokens, projection "
                     f"{pulid.projection_name(setting)}), Invert first token does not apply to PuLID")


def _clear_kv_caches(adapters) -> None:
    for adapter in adapters:
        if isinstance(getattr(adapter, "cache", None), dict):
            adapter.cache.clear()


# -- entry points called by the script ---------------------------------------------------------
def start_pass(job: Job, p) -> None:
    """process_before_every_sampling: patch this pass's sampler (the sampler exists already)."""
    is_hires = bool(getattr(p, "is_hr_pass", False))
    job.current_pass = None
    if is_hires and not job.args.hires:
        job.note("hires pass left to the WebUI (FastFace's hires option is off)")
        return
    sampler = getattr(p, "sampler", None)
    den = getattr(sampler, "model_wrap_cfg", None)
    if den is None or not hasattr(den, "combine_denoised") or not hasattr(sampler, "callback_state"):
        job.note("this sampler has no CFG denoiser FastFace knows: FastFace is off for this pass")
        return
    patches = job.patches
    adapters = ip_adapters(p)
    face = any(identity_kind(a) is not None for a in adapters)
    if job.passes == 0:
        _note_units(job, adapters)
    if not face and job.passes == 0:
        # no IP-Adapter at all although a unit asked for one: sd-webui-controlnet dropped that unit
        dropped = None if adapters else unapplied_units_note(p, job.args)
        job.note(dropped or no_face_note("sd-webui-controlnet", job.args))
    st = PassState(index=job.passes, is_hires=is_hires, face=face, images=max(int(getattr(p, "batch_size", 1) or 1), 1),
                   eps_output=is_timestep_denoiser(den))
    job.passes += 1
    job.current_pass = st
    job.layer_part = None

    original_callback = sampler.callback_state

    def callback_state(d):
        st.on_callback(d.get("i", 0))
        return original_callback(d)

    patches.setattr(sampler, "callback_state", callback_state)
    if is_timestep_sampler(sampler):   # DDIM / PLMS / UniPC: one step fewer than the denoiser's `steps`
        track_timestep_count(patches, sampler, st)
    patches.setattr(den, "_fastface_pass", (job, st))
    # out of memory in FastFace's work or in the UNet call with DCG's third row: the step again,
    # A1111's way; its IP-Adapters must then compute their own k/v (FastFace's had other rows)
    guard_denoiser(job, patches, den, st, extra_rows=lambda: st.layout == "extra_id",
                   before_host_call=lambda: _clear_kv_caches(adapters))
    if job.args.dcg:
        original_combine = den.combine_denoised
        patches.setattr(den, "combine_denoised",
                        lambda x_out, conds_list, uncond, cond_scale: combine(job, st, original_combine, x_out, conds_list, uncond, cond_scale))
    # Once per job: the class patch (also needed by DCG alone, whose row count changes between
    # steps and would break ControlNet's k/v cache) and the hooks.
    if "attention" not in job.installed and adapters:
        job.installed.add("attention")
        install_attention(job, p, patches, transform_layers=face and job.args.am_mode != "off")
    if "rows" not in job.installed:
        job.installed.add("rows")
        _install_row_counter(job, p, patches)


def end_job(job: Job, p) -> None:
    job.current_pass = None
    if job.patches is not None:
        job.patches.undo()
