"""FastFace AlwaysOn script for AUTOMATIC1111 and Forge: a thin shell around fastface.hosts.webui."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # A1111 puts the extension on sys.path only while loading scripts
    sys.path.insert(0, _ROOT)

from modules import scripts  # noqa: E402

from fastface.hosts import webui  # noqa: E402


class FastFaceScript(scripts.Script):
    sorting_priority = 15  # Forge: after its built-in ControlNet (10), whose IP-Adapter patches we wrap

    def title(self):
        return webui.TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return webui.build_ui(self, is_img2img)

    def process(self, p, *args):
        webui.process(p, *args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        webui.before_sampling(p, *args, **kwargs)

    def postprocess_image(self, p, pp, *args):
        webui.postprocess_image(p, pp)

    def postprocess(self, p, processed, *args):
        webui.postprocess(p, processed)


webui.register_callbacks()
