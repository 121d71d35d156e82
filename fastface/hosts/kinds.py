"""What an identity adapter is, one entry per kind: how each host recognises it, its face tokens,
the attention sink, whether token 0 is a background token, any projection after the attention,
how the preview lays its tokens out, how a ControlNet unit of a request names it, and whether the
readout can use a precomputed input of it.

Both hosts' discovery (`a1111.controlnet`, `forge.internals`), attention, previews
(`hosts.recording`), readout (`hosts.readout`) and notes read this table, so a new kind is one
entry here plus its host glue (its face branch, where that is not plain decoupled SDPA).

Pure data and small duck-typed readers: nothing here imports a WebUI or torch. The attribute and
class names are the hosts' own (cited per entry); a host whose internals differ finds no kind and
leaves the adapter to its own code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


def squeezed(name: str) -> str:
    """A unit's model or module name, lower-cased, without the separators people vary
    (`ip-adapter_face_id` and `IP Adapter FaceID` read alike)."""
    return "".join(c for c in str(name).lower() if c not in " -_.")


@dataclass(frozen=True)
class AdapterKind:
    """One kind of identity adapter."""

    name: str                       # in code and the trace (`am_adapters`): "faceid", "pulid", …
    label: str                      # in notes and the README
    tokens: tuple                   # face tokens per image the attention sees (informational, previews)
    # -- how a host recognises a live adapter -----------------------------------------------------
    a1111_flags: tuple = ()         # attributes of sd-webui-controlnet's `IPAdapterModel` that say so
    forge_flags: tuple = ()         # attributes of the Forge family's `IPAdapter` that say so
    forge_projection: Optional[Callable] = None   # image_proj_model → bool, where no flag is there
    # -- the attention ------------------------------------------------------------------------------
    face_branch: str = "sdpa"       # "sdpa": plain decoupled attention; "pulid": sink + projection (a1111/pulid.py)
    sink: str = "none"              # probability mass besides the face tokens: "none", "zero tokens"
    background_token: bool = False  # token 0 may look at the background: *Invert first token* applies
    projection: str = "none"        # a projection of the branch output after the attention
    # -- the rest ------------------------------------------------------------------------------------
    preview: str = "faceid"         # `views.attnmaps.token_layout`'s layout
    unit_named: Optional[Callable] = None          # (model, module), lower-cased → a request's unit of this kind
    readout_takes_precomputed: bool = False        # a unit's `ipadapter_input` is the readout's embedding
    named_in_a_note: bool = False   # the job's note names a unit of this kind (`common.note_units`)


def _faceid_projection(proj) -> bool:
    """Forge builds FaceID adapters with these projections (IPAdapterPlus.py L80, L101)."""
    return type(proj).__name__ in ("ProjModelFaceIdPlus", "MLPProjModelFaceId")


def _faceid_unit(model: str, module: str) -> bool:
    return "faceid" in model.replace("_", "").replace("-", "") or "face_id" in module


def _pulid_unit(model: str, module: str) -> bool:
    """sd-webui-controlnet's PuLID: module `ip-adapter_pulid`, a model file named *pulid*."""
    return "pulid" in model or "pulid" in module


FACEID = AdapterKind(
    name="faceid", label="FaceID", tokens=(4, 16),        # 4; Portrait 16 per face
    a1111_flags=("is_faceid",),                          # ipadapter_model.py L279
    forge_flags=("is_faceid",), forge_projection=_faceid_projection,
    background_token=True,                               # FaceID-Plus-v2's token 0
    preview="faceid", unit_named=_faceid_unit, readout_takes_precomputed=True)

PULID = AdapterKind(
    name="pulid", label="PuLID", tokens=(10,),
    a1111_flags=("is_pulid",),                           # ipadapter_model.py L281 (no PuLID on Forge)
    face_branch="pulid", sink="zero tokens",             # pulid_attn.py L26-40
    projection="ortho / ortho_v2",                       # pulid_attn.py L57-81
    preview="pulid", unit_named=_pulid_unit,
    readout_takes_precomputed=False)                     # antelopev2 + EVA-CLIP features



def _instantid_projection(proj) -> bool:
    """Where a Forge-family adapter has no `is_instant_id` (IPAdapterPlus.py L284): InstantID's
    Resampler reads the 512-d antelopev2 embedding (L341-352, `proj_in` = Linear(512, 1280)); plain
    IP-Adapter Plus also projects with a `Resampler`, but from CLIP features (1024 / 1280 wide)."""
    return type(proj).__name__ == "Resampler" and getattr(getattr(proj, "proj_in", None), "in_features", None) == 512


INSTANTID_EMBEDDING_MODULES = ("instantidfaceembedding", "insightface(instantid)")


def _instantid_unit(model: str, module: str) -> bool:
    """InstantID's IP-Adapter unit: sd-webui-controlnet's module `instant_id_face_embedding`
    (preprocessor_compiled.py L380-395), Forge's preprocessor "InsightFace (InstantID)"
    (forge_ipadapter.py L106-108), or a model that names InstantID and an IP-Adapter
    (`ip-adapter_instant_id_sdxl`). The other half, the keypoint ControlNet (module
    `instant_id_face_keypoints`, model `control_instant_id_sdxl`), is not an identity unit."""
    model, module = squeezed(model), squeezed(module)
    if "keypoints" in module:
        return False
    return any(word in module for word in INSTANTID_EMBEDDING_MODULES) or ("instantid" in model and "ipadapter" in model)


INSTANTID = AdapterKind(
    name="instantid", label="InstantID", tokens=(16,),   # Resampler(num_queries=16), ipadapter_model.py L147-158
    a1111_flags=("is_instantid",),                       # ipadapter_model.py L280: "instant_id" in the file name
    forge_flags=("is_instant_id",), forge_projection=_instantid_projection,   # IPAdapterPlus.py L284
    background_token=False,                              # 16 learnt queries over one face embedding
    preview="instantid", unit_named=_instantid_unit,
    readout_takes_precomputed=False,                     # an antelopev2 embedding, not the readout's buffalo_l
    named_in_a_note=True)

KINDS: tuple = (FACEID, PULID, INSTANTID)   # the order a host tries them in
BY_NAME = {kind.name: kind for kind in KINDS}


def _flag(obj, names) -> Optional[bool]:
    """True / False when one of `names` is a bool attribute of `obj` (True if any is), None when
    none is there."""
    values = [getattr(obj, n, None) for n in names]
    flags = [v for v in values if isinstance(v, bool)]
    return any(flags) if flags else None


def a1111_kind(adapter) -> Optional[AdapterKind]:
    """The kind of a live sd-webui-controlnet `PlugableIPAdapter` (its `ipadapter` model's flags)."""
    model = getattr(adapter, "ipadapter", None)
    for kind in KINDS:
        if kind.a1111_flags and _flag(model, kind.a1111_flags):
            return kind
    return None


def forge_kind(adapter) -> Optional[AdapterKind]:
    """The kind of a Forge-family `IPAdapter` (the objects in a `CrossAttentionPatch.ipadapters`):
    its flag where it has one, else its image projection."""
    for kind in KINDS:
        flag = _flag(adapter, kind.forge_flags) if kind.forge_flags else None
        if flag is None and kind.forge_projection is not None:
            flag = kind.forge_projection(getattr(adapter, "image_proj_model", None))
        if flag:
            return kind
    return None


def unit_kinds(model: str, module: str) -> list:
    """The kinds a request's ControlNet unit names (its model and module as the request gives
    them); empty for any other unit."""
    model, module = str(model or "").lower(), str(module or "").lower()
    return [kind for kind in KINDS if kind.unit_named is not None and kind.unit_named(model, module)]
