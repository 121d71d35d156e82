"""FastFace fault injection: an AlwaysOn script for FastFace's opt-in real-WebUI fault tests only
(see ../fastface_faults.py). Its one argument is the fault spec, e.g. "face:2" or "dcg:1"; empty
does nothing."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from modules import scripts  # noqa: E402

import fastface_faults  # noqa: E402


class FastFaceFaultInjection(scripts.Script):
    sorting_priority = 5   # Forge: before ControlNet and FastFace (it only wraps, so order is not vital)

    def title(self):
        return "FastFace fault injection"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr
        return [gr.Textbox(value="", label="FastFace fault spec (tests only)", visible=False,
                           elem_id=self.elem_id("spec"))]

    def process(self, p, spec="", *args):
        p.fastface_faults = fastface_faults.install(p, str(spec or ""))

    def postprocess(self, p, processed, *args):
        fastface_faults.finish(p, getattr(p, "fastface_faults", None))
