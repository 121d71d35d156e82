import pytest

from fastface.config import PRESET_NAMES, FastFaceArgs
from fastface.presets import PRESETS, apply_preset

EXPECTED = {  # name: (DCG, AM mode) — the preset list
    "Off": (False, "off"),
    "Stylistic": (True, "off"),
    "Realistic": (True, "scale-power"),
    "Realistic portrait": (True, "softmask"),
    "Scale-power only": (False, "scale-power"),
    "Softmask only": (False, "softmask"),
}


def test_preset_names_are_exactly_the_documented_ones():
    assert tuple(PRESETS) == tuple(EXPECTED) == PRESET_NAMES


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_values(name):
    args = PRESETS[name]
    assert args.enabled and args.preset == name
    assert (args.dcg, args.am_mode) == EXPECTED[name]
    # Everything else is the authors' code value (down 1.55 / up 1.45: the code's order).
    assert (args.alpha_peak, args.beta_peak, args.phi) == (1.5, 3.0, 0.75)
    assert (args.sp_s_down, args.sp_s_up, args.sp_p) == (1.55, 1.45, 1.3)
    assert (args.sm_quantile, args.sm_d_first, args.sm_d_later) == (0.65, 7.5, 5.0)
    assert (args.sm_s_first, args.sm_s_later, args.sm_adain) == (1.0, 1.55, 0.7)
    assert (args.am_down, args.am_mid, args.am_up) == (True, False, True)


def test_presets_are_valid():
    for args in PRESETS.values():
        assert args.validated() == (args, [])


def test_apply_preset_keeps_the_toggle():
    off = FastFaceArgs(enabled=False, alpha_peak=7.0)
    assert apply_preset(off, "Stylistic") == PRESETS["Stylistic"].replace(enabled=False)
