"""Models: loading (embedded default, hub id, local dir) and the layer-by-layer adapter."""

from polar_rl.models.adapter import AdapterError, LayerInputs, LayerModel
from polar_rl.models.loading import DEFAULT_MODEL, ModelSpecError, load_model

__all__ = ["DEFAULT_MODEL", "AdapterError", "LayerInputs", "LayerModel", "ModelSpecError", "load_model"]
