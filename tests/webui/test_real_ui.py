"""Opt-in: the real WebUI page in a headless Chromium (Debian `chromium`, driven by Playwright).

Skipped unless FASTFACE_WEBUI_UI_URL points at a WebUI serving its full UI (not --nowebui) with
this extension installed, and `playwright` is importable. Screenshots go to
FASTFACE_SCREENSHOT_DIR (default: a temporary folder). Never downloads a browser: it uses
/usr/bin/chromium (override with FASTFACE_CHROMIUM).
"""
from __future__ import annotations

import os
import tempfile

import pytest

from fastface.config import FIELD_NAMES
from fastface.infotext import to_infotext, ui_values
from fastface.presets import PRESETS

URL = os.environ.get("FASTFACE_WEBUI_UI_URL", "").rstrip("/")
playwright = pytest.importorskip("playwright.sync_api") if URL else None
pytestmark = pytest.mark.skipif(not URL, reason="FASTFACE_WEBUI_UI_URL not set (opt-in real-UI tests)")
SHOTS = os.environ.get("FASTFACE_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="fastface-shots-")


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
