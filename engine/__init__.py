"""Obliviate engine: everything that is not layout. Never imports Streamlit.

    Workbench          one base model + named LoRA adapters (expert, unlearned runs), one lock
    AnchorDictionary   anchored term -> generic translations; load / validate / consolidate / save
    Translator         anchored-term translation of token blocks and its alignment (mapping)
    generic_parts      generic = base(translated) - alpha * relu(expert(original) - base(translated))
    inspect            per-token baseline / expert / generic / unlearned predictions for a prompt
    RunConfig, execute an unlearning run (engine/config.py, engine/pipeline.py, engine/methods/)
    evaluate           forgetting measured against what must be kept (engine/evaluation/)
"""
import os

# On a shared or small CPU, OpenMP threads that spin while waiting starve each other (measured:
# a 67-token inspect 5.7-19 s -> 1.4 s on 2 busy cores). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .anchors import AnchorDictionary, load_anchors, save_anchors  # noqa: E402
from .errors import UserError  # noqa: E402
from .generic import GenericParts, generic_parts  # noqa: E402
from .inspection import Inspection, inspect  # noqa: E402
from .models import EMBEDDED, ModelConfig, Workbench  # noqa: E402
from .translation import Translation, Translator  # noqa: E402

__all__ = [
    "AnchorDictionary", "load_anchors", "save_anchors", "UserError", "GenericParts", "generic_parts",
    "Inspection", "inspect", "EMBEDDED", "ModelConfig", "Workbench", "Translation", "Translator",
]
