"""The kind table (`fastface.hosts.kinds`, issue 22 item 1): one entry per identity adapter, read by
both hosts' discovery, attention, previews, readout and notes. Each check names the host source
the entry stands for."""
from types import SimpleNamespace

import pytest

from fastface.hosts import kinds
from fastface.hosts.a1111 import controlnet as a1111_controlnet
from fastface.hosts.forge import internals as forge_internals
from fastface.hosts.readout import identity_kinds
from fastface.views.attnmaps import token_layout


def a1111_adapter(**flags):
    """A `PlugableIPAdapter` stand-in: only its `ipadapter` model's flags (ipadapter_model.py L279-281)."""
    model = SimpleNamespace(is_faceid=False, is_pulid=False, is_plus=False, is_v2=False)
    for name, value in flags.items():
        setattr(model, name, value)
    return SimpleNamespace(ipadapter=model)


class ProjModelFaceIdPlus:      # IPAdapterPlus.py L101 (Forge 2)
    pass


class MLPProjModelFaceId:       # IPAdapterPlus.py L80
    pass


class ImageProjModel:           # the plain IP-Adapter's projection
    pass


def test_every_kind_says_everything_a_host_reads():
    for kind in kinds.KINDS:
        assert kind.name and kind.label and kind.tokens
        assert kind.face_branch in ("sdpa", "pulid") and kind.sink in ("none", "zero tokens")
        assert kind.preview and callable(kind.unit_named)
        assert kinds.BY_NAME[kind.name] is kind


def test_faceid_and_pulid_entries():
    assert kinds.FACEID.background_token is True       # FaceID-Plus-v2's token 0 (the tooltip's case)
    assert kinds.FACEID.face_branch == "sdpa" and kinds.FACEID.sink == "none"
    assert kinds.FACEID.readout_takes_precomputed is True
    assert kinds.PULID.background_token is False       # *Invert first token* does not apply
    assert (kinds.PULID.face_branch, kinds.PULID.sink, kinds.PULID.projection) == ("pulid", "zero tokens",
                                                                                   "ortho / ortho_v2")
    assert kinds.PULID.tokens == (10,) and kinds.PULID.readout_takes_precomputed is False


def test_a1111_recognises_each_kind_by_the_models_flags():
    assert kinds.a1111_kind(a1111_adapter(is_faceid=True)) is kinds.FACEID
    assert kinds.a1111_kind(a1111_adapter(is_pulid=True)) is kinds.PULID
    assert kinds.a1111_kind(a1111_adapter()) is None                    # a plain IP-Adapter
    assert kinds.a1111_kind(SimpleNamespace()) is None                  # not sd-webui-controlnet's
    assert a1111_controlnet.is_faceid(a1111_adapter(is_faceid=True))
    assert a1111_controlnet.is_pulid(a1111_adapter(is_pulid=True))


def test_forge_recognises_faceid_by_its_flag_else_its_projection():
    assert kinds.forge_kind(SimpleNamespace(image_proj_model=ProjModelFaceIdPlus())) is kinds.FACEID
    assert kinds.forge_kind(SimpleNamespace(image_proj_model=MLPProjModelFaceId())) is kinds.FACEID
    assert kinds.forge_kind(SimpleNamespace(image_proj_model=ImageProjModel())) is None
    # a flag, where the adapter has one, decides (a projection class alone does not overrule it)
    assert kinds.forge_kind(SimpleNamespace(is_faceid=False, image_proj_model=ProjModelFaceIdPlus())) is None
    assert kinds.forge_kind(SimpleNamespace(is_faceid=True, image_proj_model=ImageProjModel())) is kinds.FACEID
    assert forge_internals.is_faceid_adapter(SimpleNamespace(image_proj_model=ProjModelFaceIdPlus()))


@pytest.mark.parametrize("model, module, expected", [
    ("ip-adapter-faceid-plusv2_sdxl [187cb962]", "ip-adapter_face_id_plus", ["faceid"]),
    ("ip-adapter-faceid_sd15", "InsightFace+CLIP-H (IPAdapter)", ["faceid"]),
    ("ip-adapter_pulid_sdxl_fp16", "ip-adapter_pulid", ["pulid"]),
    ("ip-adapter_sd15", "ip-adapter_clip_h", []),
    ("control_v11p_sd15_canny", "canny", []),
])
def test_request_units_are_read_by_kind(model, module, expected):
    assert [k.name for k in identity_kinds({"model": model, "module": module})] == expected


def test_preview_layouts_by_kind():
    assert token_layout(10, layout=kinds.PULID.preview).kind == "PuLID"
    assert token_layout(4, layout=kinds.FACEID.preview).kind == "FaceID"


# -- InstantID (issue 22) --------------------------------------------------------------------------------
class Linear:
    def __init__(self, in_features):
        self.in_features = in_features


class Resampler:
    """resampler.py L82-101: `proj_in` = Linear(embedding_dim, dim)."""

    def __init__(self, embedding_dim):
        self.proj_in = Linear(embedding_dim)


def test_instantid_entry():
    k = kinds.INSTANTID
    assert k.tokens == (16,) and k.face_branch == "sdpa" and k.sink == "none" and k.projection == "none"
    assert k.background_token is False and k.preview == "instantid" and k.named_in_a_note
    assert k.readout_takes_precomputed is False          # an antelopev2 embedding, not buffalo_l's


def test_a1111_tells_instantid_from_faceid_and_plain_plus():
    # ipadapter_model.py L280-288: InstantID is also `is_plus` ("latents" in its Resampler)
    assert kinds.a1111_kind(a1111_adapter(is_instantid=True, is_plus=True)) is kinds.INSTANTID
    assert kinds.a1111_kind(a1111_adapter(is_instantid=False, is_plus=True)) is None     # IP-Adapter Plus
    assert a1111_controlnet.adapter_kind(a1111_adapter(is_instantid=True)) is kinds.INSTANTID


def test_forge_tells_instantid_from_plain_plus_by_its_flag_first():
    """Forge's InstantID and IP-Adapter Plus both project with a `Resampler`; the adapter's own
    `is_instant_id` (IPAdapterPlus.py L284) decides, the Resampler's 512-d input only where it is absent."""
    instant = SimpleNamespace(is_instant_id=True, image_proj_model=Resampler(512))
    plus = SimpleNamespace(is_instant_id=False, image_proj_model=Resampler(1280))
    assert kinds.forge_kind(instant) is kinds.INSTANTID
    assert kinds.forge_kind(plus) is None
    assert kinds.forge_kind(SimpleNamespace(is_instant_id=False, image_proj_model=Resampler(512))) is None
    assert kinds.forge_kind(SimpleNamespace(image_proj_model=Resampler(512))) is kinds.INSTANTID   # no flag
    assert kinds.forge_kind(SimpleNamespace(image_proj_model=Resampler(1280))) is None
    # a FaceID adapter carries is_instant_id = False on Forge: still FaceID
    assert kinds.forge_kind(SimpleNamespace(is_instant_id=False, image_proj_model=ProjModelFaceIdPlus())) is kinds.FACEID
    assert forge_internals.is_identity_adapter(instant) and not forge_internals.is_faceid_adapter(instant)


@pytest.mark.parametrize("model, module, expected", [
    ("ip-adapter_instant_id_sdxl [eb2d3ec0]", "instant_id_face_embedding", ["instantid"]),     # A1111
    ("ip-adapter_instant_id_sdxl", "InsightFace (InstantID)", ["instantid"]),                 # Forge 2 / Neo
    ("InstantID ip-adapter", "None", ["instantid"]),
    ("control_instant_id_sdxl [c5c25a50]", "instant_id_face_keypoints", []),                  # IdentityNet
    ("instantid-controlnet", "instant_id_face_keypoints", []),
])
def test_instantid_units_are_the_ip_adapter_half_only(model, module, expected):
    assert [k.name for k in identity_kinds({"model": model, "module": module})] == expected


def test_instantid_preview_is_one_face_mosaic_whatever_the_hosts_plus_flags():
    for plus, v2 in ((True, False), (True, None), (False, None)):
        layout = token_layout(16, plus=plus, v2=v2, portrait=not plus, layout=kinds.INSTANTID.preview)
        assert layout.kind == "InstantID" and layout.groups == (("face", tuple(range(16))),) and not layout.separate
