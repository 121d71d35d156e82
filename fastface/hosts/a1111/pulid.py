"""sd-webui-controlnet's PuLID face branch, computed by FastFace so that AM can reach its map.

What the host does (v1.1.455, scripts/ipadapter/pulid_attn.py `PuLIDAttnSetting.eval`, L13-81),
called from `PlugableIPAdapter.attn_eval` when `ipadapter.is_pulid` (plugable_ipadapter.py L218-228):
  1. appends `num_zero` all-zero tokens to the 10 id tokens (8 "Fidelity", 16 "Extremely style";
     L26-40). The K/V Linears have no bias (ipadapter_model.py L58, `To_KV`), so those tokens have
     k = v = 0 exactly: a softmax sink of weight `num_zero` that adds nothing to A·V;
  2. o = SDPA(q, k, v) over the padded tokens (L42-53);
  3. Fidelity (`ortho_v2`, L57-70): gate = Σ over the first 5 tokens of softmax(q·kᵀ) — *unscaled*
     (no 1/√d), the zero tokens in the denominator — averaged over heads, (B, L, 1); then
     o + (gate − 1)·proj. Extremely style (`ortho`, L71-81): o − proj. proj = Σ_L(x·o)/Σ_L(x·x)·x
     per channel, x the attn2 input (`hidden_states`), in fp32.

What FastFace does instead, where AM is on for the layer (all of it FastFace's own choice: the
authors' code has no PuLID, and the paper's Table 3 says only "FF_AM1" = DCG + scale-power):
  * o' = A'·V on the 10 id tokens, A = softmax(q·kᵀ/√d) with the zero tokens as the exact sink
    (`ip_attention(..., sink=num_zero)`), A' the step's transform — so the transform reaches the
    id tokens' probabilities and nothing else; the softmask's statistics and its map AdaIN run over
    the 10 id tokens; *Invert first token* does not apply (PuLID has no background token);
  * the gate is the host's, read from the *untransformed*, unscaled map (it decides how much of the
    x direction PuLID keeps; transforming it would change PuLID's own balance, not the face
    attention), and the projection is the host's, applied to o'.
With no transform for the layer, `attention.py` leaves the call to the host's own code.
"""
from __future__ import annotations

import torch

from ...method.attention import face_probs_token_major
from .. import recording

Tensor = torch.Tensor

GATE_TOKENS = 5    # pulid_attn.py L62: the first 5 id tokens (the MLP's) open the Fidelity gate


def setting_of(adapter):
    """The unit's `PuLIDAttnSetting` (set by `PlugableIPAdapter.hook`), or None if it is not the
    shape FastFace knows (num_zero an int ≥ 0, ortho / ortho_v2 flags)."""
    setting = getattr(adapter, "pulid_attn_setting", None)
    zeros = getattr(setting, "num_zero", None)
    if not isinstance(zeros, int) or isinstance(zeros, bool) or zeros < 0:
        return None
    if not all(isinstance(getattr(setting, name, None), bool) for name in ("ortho", "ortho_v2")):
        return None
    return setting


def mode_name(setting) -> str:
    """sd-webui-controlnet's name of the mode (scripts/enums.py `PuLIDMode`, controlnet.py L1161-1166)."""
    if setting.ortho_v2:
        return "Fidelity"
    return "Extremely style" if setting.ortho else "no projection"


def projection_name(setting) -> str:
    return "ortho_v2" if setting.ortho_v2 else ("ortho" if setting.ortho else "none")


def zero_tokens_are_null(adapter) -> bool:
    """Whether PuLID's zero tokens have k = v = 0, i.e. its K/V projections have no bias (true for
    v1.1.455's `To_KV`); else the padding is materialised as the host does it."""
    to_kvs = getattr(getattr(getattr(adapter, "ipadapter", None), "ip_layers", None), "to_kvs", None)
    if to_kvs is None or not hasattr(to_kvs, "values"):
        return False
    return all(getattr(layer, "bias", 0) is None for layer in to_kvs.values())


def face_branch(setting, hidden_states: Tensor, query: Tensor, id_embedding: Tensor, heads: int, head_dim: int,
                emb_to_k, emb_to_v, transform, *, sink_exact: bool, kernels=None, recorder=None) -> Tensor:
    """`PuLIDAttnSetting.eval` with `transform` applied to the id tokens' attention probabilities.

    hidden_states (B, L, C) the attn2 input x; query (B, heads, L, head_dim); id_embedding (B, 10, C′)
    the blended id tokens (unpadded). Returns (B, L, heads·head_dim) in the query's dtype."""
    batch = hidden_states.shape[0]
    id_embedding, sink = _tokens_and_sink(id_embedding, setting, sink_exact)
    id_key, id_value = (t.to(query.dtype).view(batch, -1, heads, head_dim).transpose(1, 2)
                        for t in (emb_to_k(id_embedding), emb_to_v(id_embedding)))   # (B, heads, T, d)
    # (recording.face_attention is ip_attention, plus the maps when a recorder is given)
    out = recording.face_attention(query, id_key, id_value, transform, sink=sink, kernels=kernels, recorder=recorder)
    out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)   # (B, L, h·d)
    if not setting.ortho and not setting.ortho_v2:
        return out
    x, o = hidden_states.float(), out.float()
    projection = (x * o).sum(dim=-2, keepdim=True) / (x * x).sum(dim=-2, keepdim=True) * x
    if setting.ortho_v2:
        return (o + (fidelity_gate(query, id_key, sink) - 1) * projection).to(hidden_states.dtype)
    return (o - projection).to(hidden_states.dtype)


def fidelity_gate(query: Tensor, id_key: Tensor, sink: int) -> Tensor:
    """pulid_attn.py L59-61 on the untransformed map: Σ_{t < 5} softmax(q·kᵀ)_t, unscaled, with `sink`
    zero tokens (score 0) in the denominator, averaged over heads → (B, L, 1) fp32."""
    probs = face_probs_token_major(query, id_key, sink, scale=1.0)                    # (B, heads, T, L)
    return probs[:, :, :GATE_TOKENS].sum(dim=2).mean(dim=1).unsqueeze(-1)


def record_untransformed(recorder, query: Tensor, id_embedding: Tensor, heads: int, head_dim: int, emb_to_k,
                         setting, sink_exact: bool) -> None:
    """"Show face attention" for a PuLID call left to the host: the map of the 10 id tokens (the
    zero tokens in the denominator), for the preview only."""
    if recorder is None:
        return
    id_embedding, sink = _tokens_and_sink(id_embedding, setting, sink_exact)
    id_key = emb_to_k(id_embedding).to(query.dtype).view(query.shape[0], -1, heads, head_dim).transpose(1, 2)
    recording.record_maps(recorder, query, id_key, None, sink=sink)


def _tokens_and_sink(id_embedding: Tensor, setting, sink_exact: bool) -> tuple[Tensor, int]:
    """(the tokens to project, the sink): the 10 id tokens and `num_zero`, or — where the zero tokens
    are not null (biased K/V) — the tokens padded as the host pads them, and no sink."""
    sink = setting.num_zero
    if sink_exact or not sink:
        return id_embedding, sink
    zeros = id_embedding.new_zeros(id_embedding.shape[0], sink, id_embedding.shape[-1])
    return torch.cat((id_embedding, zeros), dim=1), 0
