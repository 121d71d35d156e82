"""AUTOMATIC1111 v1.10 host: DCG in the CFG denoiser, AM on sd-webui-controlnet's IP-Adapter.

Contracts relied on (A1111 v1.10.1 = 82a973c0, sd-webui-controlnet v1.1.455 = 56cec5b2; see
shared/docs/webui_api.md §2 and ipadapter_impls.md §3):

* `CFGDenoiser.forward` (modules/sd_samplers_cfg_denoiser.py L156-311) lays rows out as
  [cond rows (one per image without AND), uncond rows (B)], calls `on_cfg_denoiser` and reads back
  x / image_cond / sigma / text_cond / text_uncond, evaluates every row of x, then calls
  `self.combine_denoised(x_out, conds_list, uncond, cond_scale)`. k-diffusion and LCM denoisers
  return x₀; `CFGDenoiserTimesteps` (DDIM, PLMS, UniPC) returns ε and passes t as "sigma".
* The sampler calls `self.callback_state({'i': step, ...})` after the first model call of every
  sampler step (modules/sd_samplers_common.py L256, k_diffusion/sampling.py).
* sd-webui-controlnet prepends a marker token (+1024 cond, −1024 uncond) to every prompt row
  (scripts/hook.py `mark_prompt_context`); `PlugableIPAdapter.attn_eval` computes the face branch
  with fused SDPA and caches k/v per generation in `call_ip` (plugable_ipadapter.py L176, L200).

What FastFace does per sampling pass (only when enabled, all undone after the job):
* instance patches on this pass's sampler: `callback_state` (to know the sampler step) and
  `model_wrap_cfg.combine_denoised` (the DCG combination);
* in `on_cfg_denoiser` (registered once, a no-op for denoisers FastFace did not mark) the rows of
  the step are arranged for `branches_needed`: boosted steps add B id-only rows (negative text
  carrying the *positive* ControlNet mark, so the IP-Adapter applies the face) between the cond
  and uncond blocks; steps that need id-only but not uncond put the id-only text in the uncond
  slot instead (same row count as stock); other steps are left as they are;
* a class-level patch of `PlugableIPAdapter.attn_eval` that clears the k/v cache before every
  call (the batch composition changes between steps) and, for FaceID and PuLID adapters in targeted
  parts, recomputes the face branch with `fastface.method.attention.ip_attention` and the step's
  transform (PuLID: its 10 id tokens with the zero-token sink, then its own projection; `pulid.py`);
  forward pre-hooks on every attn2 module tell it which UNet part is running.

Modules (each imports only those above it):
    controlnet  sd-webui-controlnet's internals found by duck typing: its IP-Adapters, the prompt mark
    state       the per-pass state (`PassState`) and its sampler step
    preview     "Show face attention" on A1111 (the shared logic is `hosts.recording`)
    dcg         DCG: the rows of each step (`on_cfg_denoiser`) and the combination
    pulid       PuLID's face branch as sd-webui-controlnet computes it, with the transform and the sink
    attention   AM: the patched `PlugableIPAdapter.attn_eval` and the UNet-part hooks
    passes      the entry points: `start_pass`, `end_job`
"""
from __future__ import annotations

from .dcg import on_cfg_denoiser
from .passes import end_job, start_pass
from .preview import start_recording_pass

name = "A1111"

__all__ = ["name", "start_pass", "end_job", "on_cfg_denoiser", "start_recording_pass"]
