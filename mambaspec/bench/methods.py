"""What ``mambaspec bench`` can run: one entry of ``METHODS`` per method (name -> how to build its runner).

- ``ar``: plain target decoding through our loop (``SpeculativeGenerator`` with no drafter);
- ``mamba`` / ``transformer``: our loop with the Mamba / the Transformer drafter and ``--tree``;
- ``mamba-auto``: the Mamba drafter with the tree picked every round by the UCB bandit;
- ``mamba-dynamic``: the Mamba drafter with dynamic trees (``core.dynamic``: only what pays is drafted);
- ``lookup``: our loop with the lookup drafter (chains copied from the prompt and the output so far);
- ``mamba+lookup``: the Mamba drafter with the lookup's chains merged into its trees (``--tree``);
- ``mamba+lookup-dynamic``: the same with dynamic trees (model and copied nodes compete for the budget);
- ``eagle``: our loop with an EAGLE-style self-speculation head of the target (``--eagle-drafter``);
- ``hf-assisted``: transformers' ``generate(assistant_model=...)`` with the Transformer drafter
  (Leviathan et al. 2023 chain drafting as transformers implements it, its default settings);
- ``prompt-lookup``: transformers' ``generate(prompt_lookup_num_tokens=...)`` (n-gram drafts
  copied from the prompt, Saxena 2023).

Adding a method is adding an entry: ``Method(name, needs, build)`` where ``needs`` names the
drafter it uses (``BenchModels.drafters[needs]``) and ``build`` returns a ``MethodRun``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..core.bandit import UCBPolicy
from ..core.drafter import Composite, Drafter
from ..core.dynamic import DynamicTreePolicy
from ..core.engine import GenerationResult, SpeculativeGenerator
from ..core.sampling import SamplingConfig
from ..drafters.hybrid import HybridDrafter
from ..drafters.lookup import LookupDrafter
from ..loading.models import LoadedModel
from ..loading.trees import load_arms, resolve_tree
from .peers import full_vocab_assistant, hf_generate

Runner = Callable[[list[int], int, int | None], GenerationResult]  # (prompt ids, max new tokens, seed)


@dataclass
class BenchModels:
    """The loaded target and drafters shared by every method."""

    target: LoadedModel
    plain: SpeculativeGenerator  # the ar generator; also the source of EOS ids and the context length
    drafters: dict[str, Drafter] = field(default_factory=dict)  # "mamba", "transformer": loaded drafters
    lookup_global: bool = False  # lookup drafters also index earlier outputs (across the prompts of a row)


@dataclass
class MethodRun:
    run: Runner
    detail: str  # what the method ran with, for the CSV (tree, HF settings)
    warm_up: Runner | None = None  # the untimed warm-up, when it must differ from ``run``
    tree: str = ""  # the CSV's tree: the shape our loop drafted, `dynamic` or `auto`; "" without our drafting


@dataclass(frozen=True)
class Method:
    name: str
    needs: str | None  # the drafter it loads: "mamba", "transformer" or None
    build: Callable[[BenchModels, object], MethodRun]


def engine_method(needs: str | None, policy: Callable[[object], object] = lambda cfg: resolve_tree(cfg.tree),
                  lookup: str = ""):
    """Our decoding loop with ``BenchModels.drafters[needs]`` (None: plain decoding, or the lookup drafter alone
    with ``lookup="alone"``; ``lookup="merged"``: the drafter with lookup chains) and the tree ``policy(cfg)``."""

    def build(models: BenchModels, cfg) -> MethodRun:
        drafter = models.drafters.get(needs) if needs else None
        if lookup == "alone":
            drafter = LookupDrafter(global_index=models.lookup_global)
        elif lookup == "merged":
            drafter = HybridDrafter(drafter, LookupDrafter(global_index=models.lookup_global))
        if drafter is None:
            gen = models.plain
        else:
            gen = SpeculativeGenerator(models.target.model, drafter, tokenizer=models.target.tokenizer,
                                       target_options=models.target.optimized)
        tree = policy(cfg)
        sampling = SamplingConfig(temperature=cfg.temperature)

        def run(ids: list[int], max_new: int, seed: int | None) -> GenerationResult:
            return gen.generate(ids, max_new_tokens=max_new, tree=tree, sampling=sampling, seed=seed)

        def warm_arms(ids: list[int], max_new: int, seed: int | None) -> None:
            # a bandit warms every arm's shape without learning from it (first forwards of a new size are slow)
            for arm_shape in dict.fromkeys(a.shape for a in tree.arms):
                gen.generate(ids, max_new_tokens=max_new, tree=arm_shape, sampling=sampling, seed=seed)

        detail = "our loop, no drafter" if drafter is None else f"our loop, {drafter.name}, tree {tree.describe()}"
        return MethodRun(run, detail, warm_up=warm_arms if isinstance(tree, UCBPolicy) else None,
                         tree="" if drafter is None else tree.name)

    return build


def auto_tree(cfg) -> UCBPolicy:
    """mamba-auto's tree: one UCB bandit over the arms file, learning across the prompts of a row."""
    return UCBPolicy(load_arms(cfg.arms), c=cfg.ucb_c, edges=cfg.confidence_buckets)


def build_hf_assisted(models: BenchModels, cfg) -> MethodRun:
    target = models.target.model
    drafter = models.drafters["transformer"]
    if isinstance(drafter, Composite):  # a cross-tokenizer drafter: transformers translates through text itself
        inner = drafter.parts[0]
        own = inner.draft_vocab.target_vocab_size if inner.draft_vocab else inner.model.config.vocab_size
        assistant = full_vocab_assistant(inner, own)
        tokenizers = {"tokenizer": models.target.tokenizer, "assistant_tokenizer": inner.tokenizer}
    else:
        assistant = full_vocab_assistant(drafter, target.config.get_text_config().vocab_size)
        tokenizers = {}
    eos = sorted(models.plain.eos_token_ids)
    sampling = SamplingConfig(temperature=cfg.temperature)
    settings = {k: getattr(assistant.generation_config, k, None) for k in
                ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")}

    def run(ids: list[int], max_new: int, seed: int | None) -> GenerationResult:
        return hf_generate(target, ids, max_new, sampling, eos, seed, assistant=assistant,
                           drafter_name=drafter.name, **tokenizers)

    return MethodRun(run, "transformers assisted generation, " + (
        ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
        or "its default draft length and confidence threshold"))


def build_prompt_lookup(models: BenchModels, cfg) -> MethodRun:
    eos = sorted(models.plain.eos_token_ids)
    sampling = SamplingConfig(temperature=cfg.temperature)

    def run(ids: list[int], max_new: int, seed: int | None) -> GenerationResult:
        return hf_generate(models.target.model, ids, max_new, sampling, eos, seed,
                           prompt_lookup_tokens=cfg.prompt_lookup_tokens)

    return MethodRun(run, f"prompt_lookup_num_tokens={cfg.prompt_lookup_tokens}, max_matching_ngram_size=2")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ar", None, engine_method(None)),
    Method("mamba", "mamba", engine_method("mamba")),
    Method("mamba-auto", "mamba", engine_method("mamba", auto_tree)),
    Method("mamba-dynamic", "mamba", engine_method("mamba", lambda cfg: DynamicTreePolicy())),
    Method("lookup", None, engine_method(None, lookup="alone")),
    Method("mamba+lookup", "mamba", engine_method("mamba", lookup="merged")),
    Method("mamba+lookup-dynamic", "mamba", engine_method("mamba", lambda cfg: DynamicTreePolicy(), lookup="merged")),
    Method("transformer", "transformer", engine_method("transformer")),
    Method("eagle", "eagle", engine_method("eagle")),
    Method("hf-assisted", "transformer", build_hf_assisted),
    Method("prompt-lookup", None, build_prompt_lookup),
)}
