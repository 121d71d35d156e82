"""Scores computed here rather than read from the server: the face ID from a local insightface
pack (`face_models`, through fastface.views.likeness) and CLIP-T from a local CLIP folder
(`clip_model`, through transformers); both imported only when the config asks for them."""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from .config import Config, ConfigError


class ClipScorer:
    """Cosine similarity of CLIP ViT-L/14 image and prompt features (the paper's CLIP-T), from a local
    transformers-layout folder; never downloads."""

    def __init__(self, folder: str):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    def __call__(self, image, prompt: str) -> float:
        with self.torch.no_grad():
            batch = self.processor(text=[prompt], images=[image], return_tensors="pt", padding=True, truncation=True)
            img = self.model.get_image_features(pixel_values=batch["pixel_values"])
            txt = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            return float((img * txt).sum())


def load_clip(cfg: Config) -> tuple[Optional[Callable], str]:
    if not cfg.clip_model:
        return None, "not computed (set clip_model to a local CLIP ViT-L/14 folder to add it)"
    if not os.path.isdir(cfg.clip_model):
        return None, f"not computed: {cfg.clip_model} does not exist"
    try:
        return ClipScorer(cfg.clip_model), f"CLIP ViT-L/14 from {cfg.clip_model}"
    except Exception as exc:
        return None, f"not computed: the CLIP model in {cfg.clip_model} did not load ({type(exc).__name__}: {exc})"


# -- the face ID (optional) ---------------------------------------------------------------------------------
def load_face_model(cfg: Config, identities: dict) -> tuple:
    """(the insightface model of `face_models`, the reference embedding of every identity)."""
    from ..views.likeness import FaceModel
    try:
        face_model = FaceModel.from_folder(cfg.face_models)
    except (FileNotFoundError, ImportError) as exc:
        raise ConfigError(f"{cfg.path}: field 'face_models': {exc}") from None
    from PIL import Image
    references: dict = {}
    for name, photos in identities.items():
        references[name] = face_model.reference(Image.open(p).convert("RGB") for p in photos)
    return face_model, references


def face_id(face_model, reference, image) -> tuple[Optional[float], bool]:
    """(ID, face found) of a generated image against its identity's reference embedding."""
    emb = face_model.embed(image)
    found = emb is not None and reference is not None
    score = float(np.dot(reference, emb)) if found else None
    return score, found
