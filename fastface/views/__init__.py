"""What a user is shown about a generation, beside the image: the face-attention maps and the
likeness of the face.

    attnmaps      recording of the face-attention maps per image, step and UNet part (torch)
    attnpreview   the "Show face attention" preview image drawn from them (numpy, PIL)
    likeness      the ID metric: insightface detection + ArcFace embedding, cosine similarity
                  (numpy, onnxruntime, insightface; imported lazily)

Imports nothing of FastFace outside this package, and never a WebUI or gradio; the hosts
(`hosts.recording`, `hosts.readout`) and `fastface-eval` use it.
"""
