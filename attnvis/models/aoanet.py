"""AoANet's names as they were first published here; they live in :mod:`attnvis.captioning` now.

``attnvis.models.aoanet.load_aoanet`` keeps working for code written against
it. This module is the one place where ``models`` reaches up into
``captioning`` (the import contract in ``.importlinter`` names it).
"""

from attnvis.captioning.captioner import Captioner, load_aoanet, load_default_captioner
from attnvis.captioning.checkpoint import build_model, read_checkpoint, read_infos
from attnvis.captioning.model import AoAConfig, AoAModel
from attnvis.captioning.tiny import load_tiny_backbone, make_caption_scene, tiny_features

__all__ = ["AoAConfig", "AoAModel", "Captioner", "build_model", "load_aoanet", "load_default_captioner",
           "load_tiny_backbone", "make_caption_scene", "read_checkpoint", "read_infos", "tiny_features"]
