"""Load a target and a drafter once, generate many times: the Python API (and what ``mambaspec generate`` runs).

    from mambaspec import load_pipeline
    pipe = load_pipeline("smollm2-135m")                 # the target's shipped drafter
    print(pipe.generate("Write a haiku about the sea").text)
    for piece in pipe.stream("Explain recursion", max_new_tokens=64):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..config import DEFAULT_TARGET
from ..core.drafter import Drafter, NoDrafter
from ..core.dynamic import AcceptanceModel, CostModel, DynamicTreePolicy
from ..core.engine import GenerationResult, SpeculativeGenerator, encode_prompt
from ..core.sampling import SamplingConfig
from ..drafters import make_drafter
from ..drafters.crosstok import CrossTokenizerDrafter, same_tokenizer
from ..drafters.eagle import is_eagle, load_eagle
from ..drafters.hybrid import HybridDrafter
from ..drafters.lookup import LookupDrafter
from ..drafters.vocab import read_meta, vocab_from_meta
from ..errors import MambaspecError
from .costs import cost_store
from .models import (MERGED, NO_MODEL_DRAFTERS, LoadedModel, default_drafter, load_model, load_tokenizer, locate,
                     weights_id)
from .options import ModelOptions, check_cross_tokenizer
from .selfcheck import check_drafter
from .trees import DEFAULT_TREE, policy_name, resolve_tree


def load_drafter(name: str | None, target: LoadedModel, options: ModelOptions | None = None,
                 cross_tokenizer: str = "auto", lookup_global: bool = False) -> Drafter:
    """The drafter ``name`` for ``target``: ``none`` (no drafter), ``lookup`` (copies from the context),
    ``NAME+lookup`` (a model drafter with the lookup's chains merged into its trees), or a model drafter by
    name, folder or hub id. One with another tokenizer drafts through text (``drafters.crosstok``) unless
    ``cross_tokenizer`` is ``off`` (then it is refused). ``lookup_global``: the lookup also indexes the
    outputs of earlier generations of this process."""
    check_cross_tokenizer(cross_tokenizer)
    if name in ("none", "", None):
        return NoDrafter()
    if name == "lookup":
        return LookupDrafter(global_index=lookup_global)
    if name.endswith(MERGED):
        model = load_drafter(name.removesuffix(MERGED), target, options, cross_tokenizer)
        return HybridDrafter(model, LookupDrafter(global_index=lookup_global))
    where = locate(name)
    meta = read_meta(where) if Path(where).is_dir() else {}
    if is_eagle(meta):  # a self-speculation head: it reads this target's hidden states
        if cross_tokenizer == "on":
            raise MambaspecError(f"drafter '{name}' is an EAGLE head, which drafts from its own target's hidden "
                                 f"states and cannot draft through another tokenizer; turn cross-tokenizer off")
        return load_eagle(where, meta, target, name)
    options = options or target.options
    if options.device == "auto":  # a drafter lives where the target does
        options = ModelOptions(**{**options.as_dict(), "device": str(target.device), "device_map": None})
    loaded = load_model(name, options, role="drafter")
    drafter = make_drafter(loaded.model, loaded.tokenizer, name=name, draft_vocab=vocab_from_meta(loaded.meta))
    check_drafter(drafter, name, target.model.get_output_embeddings().weight.shape[0])
    return adapt_drafter(drafter, target.tokenizer, cross_tokenizer)


def check_drafter_for(target: str, drafter: str | None, cross_tokenizer: str = "auto",
                      sampling: SamplingConfig | None = None) -> None:
    """Refuse, before any weights load, a drafter ``target`` cannot use as asked: one with another tokenizer when
    ``cross_tokenizer`` is ``off``, or any drafter that drafts through text (another tokenizer, or ``on``) while
    sampling (greedy only). Reads the two tokenizers, nothing more; ``drafter`` None: the target's default."""
    check_cross_tokenizer(cross_tokenizer)
    greedy = sampling is None or sampling.greedy
    name = (default_drafter(target) if drafter is None else drafter).removesuffix(MERGED)
    if name in (*NO_MODEL_DRAFTERS, "") or (greedy and cross_tokenizer == "auto"):
        return
    where = locate(name)
    if is_eagle(read_meta(where) if Path(where).is_dir() else {}):
        return  # a head over the target's own hidden states: its tokenizer is the target's
    through_text = cross_tokenizer == "on" or not same_tokenizer(load_tokenizer(target), load_tokenizer(name))
    if through_text and cross_tokenizer == "off":
        raise MambaspecError(f"drafter '{name}' uses a different tokenizer than the target '{target}' and "
                             f"cross-tokenizer drafting is off; turn it on (auto), or use a drafter trained on the "
                             f"target's tokenizer")
    if through_text and not greedy:
        raise MambaspecError(f"drafter '{name}' drafts for '{target}' through text (another tokenizer), which is "
                             f"greedy only: its probabilities are over its own tokens, so sampled drafts cannot be "
                             f"verified losslessly; decode greedily (temperature 0), or use a drafter with the "
                             f"target's tokenizer")


def adapt_drafter(drafter: Drafter, target_tokenizer, mode: str = "auto") -> Drafter:
    """The drafter as the target can use it: wrapped in ``CrossTokenizerDrafter`` when its tokenizer
    differs (``auto``), always (``on``), or never, refusing a drafter with another tokenizer (``off``)."""
    check_cross_tokenizer(mode)
    same = same_tokenizer(target_tokenizer, drafter.tokenizer)
    if mode == "off" and not same:
        raise MambaspecError(
            f"drafter '{drafter.name}' uses a different tokenizer than the target ({len(drafter.tokenizer)} vs "
            f"{len(target_tokenizer)} tokens) and cross-tokenizer drafting is off; turn it on (auto), or use a "
            f"drafter trained on the target's tokenizer")
    if mode == "on" or not same:
        return CrossTokenizerDrafter(drafter, target_tokenizer)
    return drafter


def stop_at(tokenizer, strings: list[str]) -> Callable[[list[int]], bool] | None:
    """A stop test for the engine: True once the generated text contains one of ``strings``."""
    if not strings:
        return None
    return lambda ids: any(s in tokenizer.decode(ids, skip_special_tokens=True) for s in strings)


def cut_at_stop(text: str, strings: list[str]) -> str:
    """``text`` up to the first of ``strings`` (the stop string itself excluded)."""
    cuts = [text.index(s) for s in strings or [] if s in text]
    return text[: min(cuts)] if cuts else text


class TextStream:
    """Text pieces as rounds commit tokens; ``result`` holds the ``GenerationResult`` once exhausted.

    A piece is held back while it ends inside a UTF-8 character, and text from a stop string on
    is never yielded.
    """

    def __init__(self, rounds, tokenizer, stop: list[str],
                 on_done: Callable[[GenerationResult], None] | None = None) -> None:
        self._rounds, self._tokenizer, self._stop, self._on_done = rounds, tokenizer, stop, on_done
        self._ids: list[int] = []
        self._printed = ""
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while self.result is None:
            try:
                new = next(self._rounds)
            except StopIteration as done:
                self.result = done.value
                self.result.text = cut_at_stop(self.result.text, self._stop)
                if self._on_done is not None:
                    self._on_done(self.result)
                rest = self.result.text[len(self._printed):]
                self._printed = self.result.text
                if rest:
                    return rest
                raise StopIteration from None
            self._ids.extend(new)
            text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
            if self._stop:
                cut = cut_at_stop(text, self._stop)
                if cut == text:  # no stop string yet: hold back what could be the start of one
                    text = text[: max(0, len(text) - max(map(len, self._stop)) + 1)]
                else:
                    text = cut
            if text.endswith("\ufffd") or len(text) <= len(self._printed):
                continue
            piece, self._printed = text[len(self._printed):], text
            return piece
        raise StopIteration  # exhausted: the held-back rest was the last piece


@dataclass
class Pipeline:
    """A loaded target and drafter, ready to generate from text. A tree policy named by a string (``"dynamic"``,
    ``"auto"``) is made once and kept, so what it learns (costs, calibration, arm statistics) carries over; the
    dynamic policy's verification costs and the drafter's calibration also carry over between processes
    (``loading.costs``)."""

    target: LoadedModel
    drafter: Drafter
    generator: SpeculativeGenerator
    policies: dict = field(default_factory=dict)
    calibration_key: str = ""  # the drafter's kept calibration is stored under it (default: the drafter's name)

    def policy(self, tree):
        """The tree policy for ``tree`` (a shape, ``"dynamic"``, ``"auto"``, or a policy object)."""
        name = policy_name(tree)
        if name is None:
            return resolve_tree(tree)
        if name not in self.policies:  # made once: the bandit's arms file is read, the stored costs loaded, once
            self.policies[name] = resolve_tree(name, dynamic=self._dynamic_policy)
        return self.policies[name]

    def _dynamic_policy(self) -> DynamicTreePolicy:
        """Dynamic trees starting from this machine's kept costs and the drafter's kept calibration."""
        store = cost_store(self.target)
        return DynamicTreePolicy(costs=CostModel(known=store.load()),
                                 acceptance=AcceptanceModel.from_dict(store.calibration(self._calibration_key)))

    def _remember_costs(self, policy) -> None:
        if isinstance(policy, DynamicTreePolicy) and policy is self.policies.get("dynamic"):
            cost_store(self.target).save(policy.costs.samples(), self._calibration_key, policy.acceptance.as_dict())

    @property
    def _calibration_key(self) -> str:
        return self.calibration_key or self.drafter.name

    def encode(self, prompt: str, chat: bool = True, system: str | None = None) -> list[int]:
        return encode_prompt(self.target.tokenizer, prompt, chat=chat, system=system)

    def stream(self, prompt: str | list[int], *, max_new_tokens: int = 128, tree=DEFAULT_TREE,
               sampling: SamplingConfig | None = None, seed: int | None = None, chat: bool = True,
               system: str | None = None, stop: list[str] | None = None) -> TextStream:
        """Text pieces as they are accepted (``.result`` has the stats at the end). ``prompt`` is text
        (wrapped in the chat template unless ``chat=False``) or token ids; ``tree`` a shape such as
        ``"2,1,1"`` or a tree policy; ``stop`` strings end the text before them."""
        ids = prompt if isinstance(prompt, list) else self.encode(prompt, chat=chat, system=system)
        policy = self.policy(tree)
        rounds = self.generator.stream(ids, max_new_tokens, policy, sampling, seed,
                                       stop_at(self.target.tokenizer, stop or []))
        return TextStream(rounds, self.target.tokenizer, stop or [], on_done=lambda _: self._remember_costs(policy))

    def generate(self, prompt: str | list[int], **kwargs) -> GenerationResult:
        """The whole answer at once; the same keywords as ``stream``."""
        stream = self.stream(prompt, **kwargs)
        for _ in stream:
            pass
        return stream.result


def load_pipeline(target: str = DEFAULT_TARGET, drafter: str | None = None, options: ModelOptions | None = None,
                  cross_tokenizer: str = "auto", lookup_global: bool = False) -> Pipeline:
    """Load ``target`` and ``drafter`` (None: the target's default drafter; ``"none"``: no drafter; see
    ``load_drafter`` for the names)."""
    options = options or ModelOptions()
    check_cross_tokenizer(cross_tokenizer)
    tgt = load_model(target, options, role="target")
    spec = default_drafter(target) if drafter is None else drafter
    d = load_drafter(spec, tgt, options, cross_tokenizer, lookup_global)
    gen = SpeculativeGenerator(tgt.model, d, tokenizer=tgt.tokenizer, target_options=tgt.optimized)
    return Pipeline(target=tgt, drafter=d, generator=gen, calibration_key=calibration_key(spec, d.name))


def calibration_key(spec: str, name: str) -> str:
    """Where the dynamic policy keeps the calibration of the drafter loaded from ``spec`` (named ``name``): the name
    and its model's weights (``weights_id``), so that a drafter retrained under the same name or folder starts
    afresh instead of from its predecessor's counts."""
    model = spec.removesuffix(MERGED)
    wid = "" if model in (*NO_MODEL_DRAFTERS, "") else weights_id(model)
    return f"{name}@{wid}" if wid else name
