"""Host adapters: the only code that touches WebUI or IP-Adapter internals (by duck typing).

    webui       the accordion, paste, XYZ, API args and the job life cycle (A1111 and Forge)
    common      job state, reversible patches, the error guard, the step tracker (no WebUI imports)
    recording   "Show face attention": the recording and previews both hosts share
    host_info   which WebUI and IP-Adapter provider, and their versions, for the start-up line
    readout     the per-image likeness readout (`FastFace ID` in the infotext); the request's ControlNet units
    kinds       what an identity adapter is (FaceID, PuLID, …): one entry per kind, read by both hosts
    a1111/      AUTOMATIC1111 + sd-webui-controlnet: DCG in the CFG denoiser, AM on its IP-Adapter
    forge/      Forge (2, Classic): DCG through the UnetPatcher, AM on the built-in IP-Adapter

A host package exposes `name`, `start_pass(job, p)`, `end_job(job, p)` and
`start_recording_pass(job, p)` (`webui.host_for` picks one per job). A new host family is a new
subpackage beside these; a new adapter kind is one entry in `kinds` plus its glue in each host
package that finds it. Imports:
anything of FastFace; the WebUI (`modules`, `backend`, …) only lazily, inside functions, so every
module here imports without a WebUI.
"""
