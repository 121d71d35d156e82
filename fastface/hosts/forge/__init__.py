"""Forge host (Forge 2 `backend/`; Forge Gen1 / reForge `ldm_patched` where the same seams exist):
DCG through the UnetPatcher's model options, AM by wrapping the built-in IP-Adapter's attn2 patches.

Contracts relied on (Forge 2 main = dfdcbab6; shared/docs/webui_api.md §3, ipadapter_impls.md §4):

* `CFGDenoiser.forward` (modules/sd_samplers_cfg_denoiser.py L156-228) calls `on_cfg_denoiser` with
  the un-batched x / sigma / text_cond / text_uncond and reads them back, then calls
  `backend.sampling.sampling_function.sampling_function`, which reads
  `p.sd_model.forge_objects.unet` on every model call. At CFG 1 `setup_conds` sets `p.uc = None`
  (processing.py L499-501; `hr_uc` L1587-1588), so text_uncond is None.
* `sampling_function` (L325-363) compiles the conditions, attaches ControlNet and c_concat, runs
  `conditioning_modifiers`; `sampling_function_inner` (L292-322) drops the uncond at CFG 1 unless
  `disable_cfg1_optimization`, runs `sampler_pre_cfg_function`s (6-tuple), evaluates
  `calc_cond_uncond_batch` (x₀ predictions; COND = 0, UNCOND = 1 per chunk in
  `transformer_options["cond_or_uncond"]`), then `cfg_result = x − sampler_cfg_function(args)`
  (a single slot), then the `sampler_post_cfg_function`s.
* `UnetPatcher.clone()` (backend/patcher/unet.py L26-35) deep-copies `model_options`, patch
  objects included. Forge resets `forge_objects` from `forge_objects_after_applying_lora` before
  every `process_before_every_sampling` and calls it twice for the hires pass (processing.py
  L1510, L1518, L1522).
* The built-in IP-Adapter (extensions-builtin/sd_forge_ipadapter/lib_ipadapter/IPAdapterPlus.py
  L161-171, L369-524) stores one `CrossAttentionPatch` per attn2 key in
  `model_options["transformer_options"]["patches_replace"]["attn2"]`; it is called as
  `patch(q, k, v, extra_options)` with projected q/k/v (backend/nn/unet.py L262-270) and holds the
  adapters (≈ 1 GB for SDXL FaceID) in parallel lists.

What FastFace does per sampling pass (only when enabled):
* clones the UNet patcher without deep-copying the IP-Adapter (the attn2 patches are wrapped
  first; the wrapper's `__deepcopy__` shares the adapter), assigns the clone to
  `p.sd_model.forge_objects.unet` (undone with the job);
* DCG: a conditioning modifier stashes the compiled negative conditioning in the step's
  model options; the hook that runs before the evaluation — a pre-CFG function (6-tuple) on
  Forge 2 / Forge Classic, `sampler_calc_cond_batch_function` on reForge 3b56b268 (samplers.py
  L419-422; its pre-CFG functions get an args dict after the evaluation) — decides per model call
  how the id-only branch (negative text + face) is evaluated and drops the uncond rows on steps
  that read neither; a
  `model_function_wrapper` (sampling_function.py L270-271) carries that out inside Forge's own
  `calc_cond_uncond_batch`, so a step is ONE UNet call:
    - two branches (id-only + full): the negative rows stay in the uncond slot and are labelled
      COND inside the UNet (`cond_or_uncond`, `cond_mark`, `cond_indices`), so the IP-Adapter
      gives them the face; Forge files their output as the uncond prediction, read as ε_id;
    - three branches: a copy of the negative chunk labelled COND is appended to the call (every
      per-row input copied) and split off after the UNet;
  the cfg function returns x − `dcg_x0(...)`. A separate `calc_cond_uncond_batch` call (negative
  text in the *cond* slot) remains for a ControlNet unit that weights cond and uncond rows
  differently and for a bypassed wrapper. At CFG 1 FastFace encodes the negative prompt itself
  and hands it to Forge in `on_cfg_denoiser`. A cfg function already in the slot (e.g. Dynamic
  Thresholding) is chained: it receives a CFG problem whose plain-CFG answer is the DCG result;
  another UNet wrapper runs inside FastFace's;
* AM: every `CrossAttentionPatch`-like attn2 patch is wrapped; FaceID adapters in targeted parts
  and steps get `fastface.method.attention.ip_attention` with the step's transform and the unit
  weight as the host's patch applies it (w, or w² on reForge: measured once per patch class),
  everything else runs Forge's own code;
* the sampler step comes from the sampler's `callback_state` (as on A1111), rows and UNet calls
  per step are counted by a forward pre-hook on the UNet (trace).

Modules (each imports only those above it):
    state       the per-pass state (`ForgePass`) and its sampler step
    internals   Forge's internals found by duck typing: the samplers' batch functions, IP-Adapter patches
                and how they apply a unit's weight
    preview     "Show face attention" on Forge (the shared logic is `hosts.recording`)
    attention   AM: `FaceAttn2Patch`, the wrapper of the built-in IP-Adapter's attn2 patches; the UNet clone
    batching    DCG's id-only rows inside Forge's own UNet call (`model_function_wrapper`)
    dcg         DCG: the conditioning stash, the pre-CFG plan, the cfg function and their install
    negative    the negative prompt encoded by FastFace at CFG 1
    passes      the entry points: `start_pass`, `end_job`, the `on_cfg_denoiser` callback
"""
from __future__ import annotations

from .passes import end_job, on_cfg_denoiser, register_callbacks, start_pass
from .preview import start_recording_pass

name = "Forge"

__all__ = ["name", "start_pass", "end_job", "on_cfg_denoiser", "register_callbacks", "start_recording_pass"]
