"""Load a target and a drafter by name and put them together: what ``mambaspec generate`` runs."""

from __future__ import annotations

from dataclasses import dataclass

from .crosstok import adapt_drafter, check_mode
from .drafters import Drafter, NoDrafter, make_drafter
from .engine import GenerationResult, SpeculativeGenerator, encode_prompt
from .models import LoadedModel, load_model, registry
from .optimize import optimize_model
from .sampling import SamplingConfig
from .vocab import vocab_from_meta
from .tree import DEFAULT_TREE

DEFAULT_TARGET = "smollm2-135m"


def default_drafter(target: str) -> str:
    """The drafter used when ``--drafter`` is not given: the target's shipped drafter, else none."""
    entry = registry().get(target)
    return (entry.default_drafter if entry and entry.default_drafter else None) or "none"


def load_drafter(name: str, target: LoadedModel, device: str = "auto", dtype: str = "auto",
                 cross_tokenizer: str = "auto", linear: str = "auto") -> Drafter:
    """The drafter ``name`` for ``target``; one with another tokenizer drafts through text
    (``crosstok.CrossTokenizerDrafter``) unless ``cross_tokenizer`` is ``off`` (then it is refused).
    ``linear`` is the drafter's linear-layer backend (``optimize.optimize_model``)."""
    check_mode(cross_tokenizer)
    if name in ("none", "", None):
        return NoDrafter()
    loaded = load_model(name, device=str(target.device) if device == "auto" else device, dtype=dtype)
    optimize_model(loaded.model, linear=linear)
    drafter = make_drafter(loaded.model, loaded.tokenizer, name=name, draft_vocab=vocab_from_meta(loaded.meta))
    return adapt_drafter(drafter, target.tokenizer, cross_tokenizer)


@dataclass
class Pipeline:
    target: LoadedModel
    drafter: Drafter
    generator: SpeculativeGenerator

    def generate(self, prompt: str, chat: bool = True, **kwargs) -> GenerationResult:
        """Generate from a text prompt; keyword arguments go to ``SpeculativeGenerator.generate``."""
        ids = encode_prompt(self.target.tokenizer, prompt, chat=chat)
        return self.generator.generate(ids, **kwargs)


def load_pipeline(
    target: str = DEFAULT_TARGET,
    drafter: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    device_map: str | None = None,
    cross_tokenizer: str = "auto",
    linear: str = "auto",
    quantize: str = "none",
    compile: bool = False,
) -> Pipeline:
    """Load ``target`` and ``drafter`` (None = the target's default drafter, "none" = no drafter);
    ``cross_tokenizer`` (auto/on/off) says whether a drafter with another tokenizer drafts through text;
    ``linear``/``quantize``/``compile`` make the target's forward cheaper (``optimize.optimize_model``)."""
    tgt = load_model(target, device=device, dtype=dtype, device_map=device_map)
    optimize_model(tgt.model, linear=linear, quantize=quantize, compile=compile)
    drafter_name = default_drafter(target) if drafter is None else drafter
    d = load_drafter(drafter_name, tgt, device=device, dtype=dtype, cross_tokenizer=cross_tokenizer, linear=linear)
    gen = SpeculativeGenerator(tgt.model, d, tokenizer=tgt.tokenizer)
    return Pipeline(target=tgt, drafter=d, generator=gen)


def generate(prompt: str, target: str = DEFAULT_TARGET, drafter: str | None = None, tree: str = DEFAULT_TREE,
             max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             seed: int | None = None, chat: bool = True, device: str = "auto", dtype: str = "auto",
             cross_tokenizer: str = "auto") -> GenerationResult:
    """One call from text to text: ``mambaspec.generate("Write a haiku")``."""
    pipe = load_pipeline(target, drafter, device=device, dtype=dtype, cross_tokenizer=cross_tokenizer)
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k)
    return pipe.generate(prompt, chat=chat, max_new_tokens=max_new_tokens, tree=tree, sampling=sampling, seed=seed)
