"""eds: Energy-Driven Steering. Cut false refusals at inference time, keep harmful requests refused.

The method in three calls: `collect` hidden states with good/bad labels, `train` an energy model
per layer, `steer` generation down the energy landscape.
"""

__version__ = "0.1.0"

from .bundle import EnergyBundle, SteerSettings
from .collect import CollectConfig, Collection, collect
from .data import Prompt
from .data import load as load_prompts
from .judge import Judge, SubstringJudge, get_judge
from .models import DEFAULT_MODEL, Fingerprint, LoadedModel, load_model
from .steer import steer
from .train import TrainConfig, train

__all__ = [
    "DEFAULT_MODEL",
    "CollectConfig",
    "Collection",
    "EnergyBundle",
    "Fingerprint",
    "Judge",
    "LoadedModel",
    "Prompt",
    "SteerSettings",
    "SubstringJudge",
    "TrainConfig",
    "__version__",
    "collect",
    "get_judge",
    "load_model",
    "load_prompts",
    "steer",
    "train",
]
