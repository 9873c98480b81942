"""mambaspec: speculative decoding with Mamba drafters (arXiv 2506.01206).

The Python API (names load lazily, so ``import mambaspec`` is cheap):

    from mambaspec import load_pipeline, ModelOptions
    pipe = load_pipeline("smollm2-135m", options=ModelOptions(device="cpu"))
    result = pipe.generate("Write a Python function that reverses a string.", max_new_tokens=64)
    print(result.text, result.stats.tokens_per_s)

    from mambaspec import BenchConfig, run_bench
    frame = run_bench(BenchConfig("humaneval", limit=5)).frame     # a pandas.DataFrame
"""

from importlib import import_module

__version__ = "0.2.0"

_EXPORTS = {
    "MambaspecError": "errors",
    "ModelOptions": "loading.options",
    "LoadedModel": "loading.models", "load_model": "loading.models",
    "Pipeline": "loading.pipeline", "load_pipeline": "loading.pipeline", "load_drafter": "loading.pipeline",
    "SpeculativeGenerator": "core.engine", "GenerationResult": "core.engine", "encode_prompt": "core.engine",
    "GenerationStats": "core.stats", "SamplingConfig": "core.sampling", "warp": "core.sampling",
    "DraftTree": "core.tree", "TreeShape": "core.shape", "verify_tree": "core.verify",
    "accept_child_sampled": "core.verify", "UCBPolicy": "core.bandit", "FixedTree": "core.policy",
    "Drafter": "core.drafter", "NoDrafter": "core.drafter", "MambaDrafter": "drafters.mamba",
    "MambaState": "drafters.mamba", "TransformerDrafter": "drafters.transformer",
    "CrossTokenizerDrafter": "drafters.crosstok", "make_drafter": "drafters",
    "resolve_tree": "loading.trees", "load_arms": "loading.trees", "DEFAULT_TREE": "loading.trees",
    "BenchConfig": "bench.runner", "run_bench": "bench.runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'mambaspec' has no attribute '{name}'")
