"""Opt-in: the real WebUI page in a headless Chromium (Debian `chromium`, driven by Playwright).

Skipped unless FASTFACE_WEBUI_UI_URL points at a WebUI serving its full UI (not --nowebui) with
this extension installed, and `playwright` is importable. Screenshots go to
FASTFACE_SCREENSHOT_DIR (default: a temporary folder), named `<host>_<tab>_<state>.png`.
FASTFACE_HOST=forge for Forge 2 (gradio 4), as for test_real_webui.py. Never downloads a browser:
it uses /usr/bin/chromium (override with FASTFACE_CHROMIUM).

`test_generated_infotext_note` generates one 64×64, 4-step image (no FaceID unit, so FastFace
writes its no-FaceID note) and checks the note's text in the result's infotext.
"""
from __future__ import annotations

import os
import re
import tempfile

import pytest

from fastface.config import FIELD_NAMES
from fastface.hosts.common import no_face_note
from fastface.infotext import to_infotext, ui_values
from fastface.presets import PRESETS

URL = os.environ.get("FASTFACE_WEBUI_UI_URL", "").rstrip("/")
playwright = pytest.importorskip("playwright.sync_api") if URL else None
pytestmark = pytest.mark.skipif(not URL, reason="FASTFACE_WEBUI_UI_URL not set (opt-in real-UI tests)")
SHOTS = os.environ.get("FASTFACE_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="fastface-shots-")
HOST = os.environ.get("FASTFACE_HOST", "a1111").lower()
FORGE = HOST in ("forge", "forge-classic", "reforge", "neo")


@pytest.fixture(scope="module")
def page():
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=os.environ.get("FASTFACE_CHROMIUM", "/usr/bin/chromium"), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        pg.goto(URL, wait_until="domcontentloaded", timeout=180_000)
        pg.wait_for_selector("#script_txt2img_fastface_enabled", state="attached", timeout=180_000)
        yield pg
        browser.close()


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_accordion_renders(page, tab):
    if tab == "img2img":
        page.locator("#tabs button", has_text="img2img").first.click()
    else:
        page.locator("#tabs button", has_text="txt2img").first.click()
    root = f"#script_{tab}_fastface_enabled"
    page.wait_for_selector(root, state="visible", timeout=60_000)
    page.locator(f"{root} .label-wrap").first.click()
    page.wait_for_selector(f"#script_{tab}_fastface_alpha_peak", state="visible", timeout=30_000)
    page.locator(root).scroll_into_view_if_needed()
    page.locator(root).screenshot(path=os.path.join(SHOTS, f"accordion_{tab}.png"))
    text = page.locator(root).inner_text()
    for label in ("Preset", "Decoupled guidance (DCG)", "α peak (identity)", "Attention transform"):
        assert label in text


def _value(page, name):
    el = page.locator(f"#script_txt2img_fastface_{name}")
    if name == "enabled":
        return page.locator("#script_txt2img_fastface_enabled-checkbox input").first.is_checked()
    inputs = el.locator("input")
    if inputs.count() and inputs.first.get_attribute("type") == "checkbox":
        return inputs.first.is_checked()
    if inputs.count() and inputs.first.get_attribute("type") == "radio":
        return el.locator("input:checked").first.get_attribute("value")
    if el.locator("textarea").count():
        return el.locator("textarea").first.input_value()
    return inputs.first.input_value()


def test_paste_from_infotext_restores_every_control(page):
    page.locator("#tabs button", has_text="txt2img").first.click()
    args = PRESETS["Realistic portrait"].replace(alpha_peak=2.25, phi=0.5, am_up=False)
    line = f'a portrait\nNegative prompt: blurry\nSteps: 4, Sampler: Euler, CFG scale: 1, Seed: 1, Size: 64x64, FastFace: "{to_infotext(args)}"'
    prompt = page.locator("#txt2img_prompt textarea").first
    prompt.fill(line)
    page.locator("#txt2img_tools #paste, #tab_txt2img #paste").first.click()
    page.wait_for_timeout(3000)
    expected = ui_values(args)
    got = {name: _value(page, name) for name in FIELD_NAMES}
    page.locator("#script_txt2img_fastface_enabled").screenshot(path=os.path.join(SHOTS, "after_paste.png"))
    for name in FIELD_NAMES:
        want = expected[name]
        have = got[name]
        if isinstance(want, float):
            assert abs(float(have) - want) < 1e-6, (name, have, want)
        else:
            assert str(have).lower() == str(want).lower(), (name, have, want)
    # pasting parameters without FastFace turns it off
    prompt.fill("a portrait\nSteps: 4, Sampler: Euler, CFG scale: 1, Seed: 1, Size: 64x64")
    page.locator("#txt2img_tools #paste, #tab_txt2img #paste").first.click()
    page.wait_for_timeout(3000)
    assert _value(page, "enabled") is False


def test_accordion_shows_only_the_controls_of_the_chosen_mode(page):
    """Real Gradio: the transform / schedule radios hide the controls that do not act (values kept)."""
    page.locator("#tabs button", has_text="txt2img").first.click()
    root = "#script_txt2img_fastface_enabled"
    page.locator(root).scroll_into_view_if_needed()
    if not page.locator("#script_txt2img_fastface_am_mode").first.is_visible():
        page.locator(f"{root} .label-wrap").first.click()
    for acc in page.locator(f"{root} .label-wrap", has_text="Advanced").all():
        acc.click()

    def shown(name):
        return page.locator(f"#script_txt2img_fastface_{name}").first.is_visible()

    def pick(name, choice):
        page.locator(f"#script_txt2img_fastface_{name} label", has_text=choice).first.click()
        page.wait_for_timeout(1500)

    assert shown("show_attention")
    pick("am_mode", "softmask")
    assert shown("sm_quantile") and shown("sm_invert_first") and not shown("sp_p") and not shown("sp_s_down")
    page.locator(root).screenshot(path=os.path.join(SHOTS, "accordion_softmask.png"))
    pick("am_mode", "scale-power")
    assert shown("sp_p") and not shown("sm_quantile")
    pick("schedule", "custom")
    assert shown("alpha_custom") and shown("beta_custom")
    pick("schedule", "intermediate")
    assert not shown("alpha_custom")
    pick("am_mode", "off")
    assert not shown("sp_p") and not shown("am_down") and not shown("clamp_max")
    assert "background" in (page.locator("#script_txt2img_fastface_sm_invert_first").first.get_attribute("title") or "")
    pick("am_mode", "scale-power")


# -- issue #17: the accordion as a newcomer reads it --------------------------------------------------
def _open(page, tab):
    page.locator("#tabs button", has_text=tab).first.click()
    root = f"#script_{tab}_fastface_enabled"
    page.wait_for_selector(root, state="visible", timeout=60_000)
    page.locator(root).scroll_into_view_if_needed()
    if not page.locator(f"#script_{tab}_fastface_am_mode").first.is_visible():
        page.locator(f"{root} .label-wrap").first.click()
        page.wait_for_selector(f"#script_{tab}_fastface_am_mode", state="visible", timeout=30_000)
    return root


def _shown(page, tab, item):
    loc = page.locator(f"#script_{tab}_fastface_{item}")
    return loc.count() > 0 and loc.first.is_visible()


def _pick_radio(page, tab, name, choice):
    page.locator(f"#script_{tab}_fastface_{name} label", has_text=choice).first.click()
    page.wait_for_timeout(1500)


def _pick_preset(page, tab, preset):
    page.locator(f"#script_{tab}_fastface_preset input").first.click()
    page.wait_for_timeout(500)
    option = page.locator(f'ul.options li[data-value="{preset}"]')   # gradio 3.41 and 4.40
    if not option.count():   # the chosen option carries a check mark in gradio 4
        option = page.locator("ul.options li", has_text=re.compile(rf"^\W*{re.escape(preset)}\s*$"))
    option.first.click()
    page.wait_for_timeout(2500)


def _changes_line(page, tab):
    return page.locator(f"#script_{tab}_fastface_preset_changes").first.inner_text().strip() \
        if _shown(page, tab, "preset_changes") else ""


def _open_advanced(page, tab, section, probe):
    """Open the section unless `probe` (a control shown in it now) is visible already."""
    box = page.locator(f"#script_{tab}_fastface_{section}_advanced")
    if not _shown(page, tab, probe):
        box.locator(".label-wrap").first.click()
        page.wait_for_timeout(800)


def _one_line(page, tab, name):
    """The control's label takes one line: its height is about that of one line of its text."""
    label = page.locator(f"#script_{tab}_fastface_{name}").first.locator("span, label").first
    box = label.bounding_box()
    line = float(label.evaluate("e => parseFloat(getComputedStyle(e).lineHeight) || "
                                "1.4 * parseFloat(getComputedStyle(e).fontSize)"))
    return box["height"] < 1.6 * line, (name, box, line)


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_accordion_states_as_a_newcomer_sees_them(page, tab):
    """Screenshots (default, softmask with Advanced open, Softmask only) and items 2, 3, 4, 6 of #17."""
    root = _open(page, tab)
    _pick_preset(page, tab, "Realistic")
    shot = lambda state: page.locator(root).screenshot(path=os.path.join(SHOTS, f"{HOST}_{tab}_{state}.png"))  # noqa: E731
    # item 4: hires fix only where there is one
    assert _shown(page, tab, "hires") is (tab == "txt2img")
    assert _shown(page, tab, "readout") and _shown(page, tab, "show_attention")
    # item 3: both Advanced sections have something to show with Realistic
    assert _shown(page, tab, "guidance_advanced") and _shown(page, tab, "attention_advanced")
    assert _changes_line(page, tab) == ""
    shot("default")
    # item 6: the transform choices on one line, long slider labels on one line
    labels = page.locator(f"#script_{tab}_fastface_am_mode label")
    tops = {round(labels.nth(i).bounding_box()["y"]) for i in range(labels.count())}
    assert labels.count() == 3 and len(tops) == 1, tops
    # item 2: a changed control shows under the preset; the preset's name stays
    _pick_radio(page, tab, "am_mode", "softmask")
    assert _changes_line(page, tab) == "Realistic + 1 change: Attention transform"
    _open_advanced(page, tab, "attention", "sm_s_first")
    for name in ("sm_d_later", "sm_s_first", "sm_s_later", "clamp_max", "sm_quantile", "sm_adain"):
        ok, info = _one_line(page, tab, name)
        assert ok, info
    shot("softmask_advanced")
    # item 3: Softmask only (DCG off) hides the empty Guidance Advanced box; the transform off the other
    _pick_preset(page, tab, "Softmask only")
    assert _changes_line(page, tab) == ""
    assert not _shown(page, tab, "guidance_advanced") and _shown(page, tab, "attention_advanced")
    shot("softmask_only")
    _pick_radio(page, tab, "am_mode", "off")
    assert not _shown(page, tab, "attention_advanced")
    assert _changes_line(page, tab) == "Softmask only + 1 change: Attention transform"
    _pick_preset(page, tab, "Realistic")
    assert _shown(page, tab, "guidance_advanced") and _shown(page, tab, "attention_advanced")


def test_generated_infotext_note(page):
    """Item 1 of #17: a result's infotext carries the note with its punctuation (no FaceID unit)."""
    tab = "txt2img"
    _open(page, tab)
    line = ('a portrait\nNegative prompt: blurry\nSteps: 4, Sampler: Euler, CFG scale: 1, Seed: 7, '
            'Size: 64x64, FastFace: "preset=Realistic"')
    page.locator("#txt2img_prompt textarea").first.fill(line)
    page.locator("#txt2img_tools #paste, #tab_txt2img #paste").first.click()
    page.wait_for_timeout(3000)
    assert _value(page, "enabled") is True
    page.locator("#txt2img_generate").first.click()
    info = page.locator("#html_info_txt2img")
    info.filter(has_text="FastFace").first.wait_for(state="visible", timeout=300_000)
    text = info.first.inner_text()
    where = "Forge's ControlNet" if FORGE else "sd-webui-controlnet"
    note = no_face_note(where, PRESETS["Realistic"])
    assert f'FastFace note: "{note}"' in text, text
    assert 'FastFace: "preset=Realistic"' in text or "FastFace: preset=Realistic" in text, text
    page.locator("#txt2img_results, #txt2img_gallery_container").first.screenshot(
        path=os.path.join(SHOTS, f"{HOST}_txt2img_infotext.png"))
