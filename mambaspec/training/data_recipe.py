"""A distillation data set's recipe (``recipes/data/*.yaml``): ``DataRecipe`` and its sections, each a typed record
whose keys are checked when the YAML is read (an unknown key, at any level, is a one-line error naming the known ones).

The fingerprint (``settings_key``) covers exactly what a recipe file states, as it always has: a section's defaults
are not written into it, so a data set made before a default or a section existed keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..config import cache_dir, load_yaml, recipes_dir
from ..errors import MambaspecError

S = TypeVar("S", bound="Section")


@dataclass(frozen=True)
class Section:
    """A recipe section: a record of settings with defaults; ``given`` keeps which keys the file stated."""

    key: ClassVar[str]
    given: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def parse(cls: type[S], raw: Any, where: str) -> S:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise MambaspecError(f"{where}: '{cls.key}' must be a mapping of settings, got {type(raw).__name__}")
        known = [f.name for f in fields(cls) if f.name != "given"]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise MambaspecError(f"{where}: unknown setting '{cls.key}.{unknown[0]}'; known: {', '.join(known)}")
        return cls(**raw, given=tuple(raw))

    def stated(self) -> dict:
        """The settings the recipe file stated (what the fingerprint covers)."""
        return {k: getattr(self, k) for k in self.given}

    def __bool__(self) -> bool:  # a section the file left out (or left empty) is off
        return bool(self.given)


@dataclass(frozen=True)
class MagpieSettings(Section):
    """User turns the target writes itself (Magpie)."""

    key: ClassVar[str] = "magpie"
    attempts: int = 0
    batch_size: int = 32
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    systems: tuple[str, ...] | list[str] = ("You are a helpful assistant.",)

    def __post_init__(self) -> None:
        if self.attempts and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise MambaspecError(f"magpie: the target samples its user turns; temperature must be > 0 and top_p in "
                                 f"(0, 1], got {self.temperature} and {self.top_p}")


@dataclass(frozen=True)
class DocumentSettings(Section):
    """Summaries of and questions over documents found on the machine."""

    key: ClassVar[str] = "documents"
    short: int = 0
    long: int = 0
    short_tokens: tuple[int, int] | list[int] = (200, 900)
    long_tokens: tuple[int, int] | list[int] = (1000, 3500)


@dataclass(frozen=True)
class AnswerSettings(Section):
    """How the target answers the plan's batches."""

    key: ClassVar[str] = "answers"
    batches: int = 0  # 0: the whole plan; N: its first N batches (a budget, outside the fingerprint)
    max_new_tokens: int = 256
    batch_size: int = 16
    long_batch_size: int = 4
    sampled_fraction: float = 0.0
    temperature: float = 0.7
    top_p: float = 1.0
    top_k_logprobs: int = 8

    def __post_init__(self) -> None:
        if self.sampled_fraction and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise MambaspecError(f"answers: sampled_fraction {self.sampled_fraction} samples answers; temperature must "
                                 f"be > 0 and top_p in (0, 1], got {self.temperature} and {self.top_p}")


@dataclass(frozen=True)
class MultiturnSettings(Section):
    """``conversations`` of the prompts become multi-turn (domain ``multiturn``)."""

    key: ClassVar[str] = "multiturn"
    conversations: int = 0
    turns: tuple[int, int] | list[int] = (2, 3)
    from_domains: list[str] | None = None  # None: every domain but documents
    max_chars: int = 2000
    followups: dict[str, list[str]] = field(default_factory=dict)  # per first domain, ``any`` for all


@dataclass(frozen=True)
class LongAnswerSettings(Section):
    """Some training batches of short prompts answer longer."""

    key: ClassVar[str] = "long_answers"
    fraction: float = 0.0  # of the training batches
    max_new_tokens: int = 768


SECTIONS: dict[str, type[Section]] = {s.key: s for s in (MagpieSettings, DocumentSettings, AnswerSettings,
                                                          MultiturnSettings, LongAnswerSettings)}


@dataclass
class DataRecipe:
    """A distillation data set (a YAML file in ``recipes/data/``)."""

    name: str
    target: str = "smollm2-135m"
    seed: int = 0
    magpie: MagpieSettings = field(default_factory=MagpieSettings)
    templates: dict[str, int] = field(default_factory=dict)  # template kind (prompt-parts.yaml) -> prompts
    stdlib_functions: int = 0
    documents: DocumentSettings = field(default_factory=DocumentSettings)
    answers: AnswerSettings = field(default_factory=AnswerSettings)
    heldout_per_domain: int = 12
    multiturn: MultiturnSettings = field(default_factory=MultiturnSettings)
    long_answers: LongAnswerSettings = field(default_factory=LongAnswerSettings)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "data recipe") -> DataRecipe:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise MambaspecError(f"{where}: unknown setting '{unknown[0]}'; known: {', '.join(sorted(known))}")
        if "name" not in raw:
            raise MambaspecError(f"{where}: give the data set a name (name: ...)")
        values: dict[str, Any] = {k: SECTIONS[k].parse(v, where) if k in SECTIONS else v for k, v in raw.items()}
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> DataRecipe:
        return cls.from_dict(load_yaml(path, "data recipe"), str(path))

    @classmethod
    def named(cls, name: str) -> DataRecipe:
        """The data recipe ``recipes/data/NAME.yaml``."""
        path = recipes_dir() / "data" / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml") if p.stem != "prompt-parts"))
            raise MambaspecError(f"no data set '{name}' in {path.parent}; known: {known}")
        return cls.load(path)

    @classmethod
    def of_source(cls, src: dict) -> DataRecipe:
        """The data set a drafter recipe's ``distill`` source names; its ``batches: N`` becomes the budget (the
        first N batches of the plan: e.g. the finished prefix of a set still being made elsewhere)."""
        recipe = cls.named(src["set"])
        if src.get("batches"):
            recipe.answers = replace(recipe.answers, batches=int(src["batches"]))
        return recipe

    @property
    def folder(self) -> Path:
        return cache_dir() / "data" / self.name

    @property
    def packs(self) -> Path:
        """Where packs of this data set made on earlier machines are committed (``training.datapack``)."""
        return recipes_dir() / "data" / "packs" / self.name

    def settings_key(self) -> str:
        """A fingerprint of everything that decides the prompts, the plan and the answers: what the recipe states
        but ``answers.batches`` (a budget: how much of the plan to answer)."""
        settings: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in SECTIONS:
            settings[key] = settings[key].stated()
        settings["answers"].pop("batches", None)
        for key in ("multiturn", "long_answers"):  # added later: unused, they leave older sets' keys as they were
            if not settings[key]:
                del settings[key]
        return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
