"""mambaspec: speculative decoding with Mamba drafters (arXiv 2506.01206)."""

from .crosstok import CrossTokenizerDrafter
from .drafters import Drafter, MambaDrafter, MambaState, NoDrafter, TransformerDrafter, make_drafter
from .engine import GenerationResult, GenerationStats, SpeculativeGenerator, encode_prompt
from .errors import MambaspecError
from .models import LoadedModel, load_model
from .sampling import SamplingConfig, warp
from .tree import DraftTree, TreeShape
from .verify import accept_child_sampled, verify_tree

__version__ = "0.1.0"

__all__ = [
    "CrossTokenizerDrafter", "Drafter", "DraftTree", "GenerationResult", "GenerationStats", "LoadedModel", "MambaDrafter",
    "MambaState", "MambaspecError", "NoDrafter", "SamplingConfig", "SpeculativeGenerator",
    "TransformerDrafter", "TreeShape", "accept_child_sampled", "encode_prompt", "load_model",
    "make_drafter", "verify_tree", "warp",
]
