"""A drafter training run, as a YAML recipe (``recipes/drafters/*.yaml``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..config import load_yaml
from ..errors import MambaspecError

ARCHS = ("mamba2", "mamba", "llama", "eagle")
SOURCES = ("stdlib-code", "distill", "files")
LABELS = ("real", "target")  # what a text source teaches: its next token, or the target's argmax (training/relabel)


@dataclass
class DrafterRecipe:
    """Everything that defines a drafter training run."""

    arch: str = "mamba2"
    hidden_size: int = 256
    num_layers: int = 4
    state_size: int = 32  # mamba / mamba2
    head_dim: int = 64  # mamba2
    expand: int = 2  # mamba / mamba2
    num_heads: int = 4  # llama (matched-size layers are chosen automatically)
    llama_layers: int = 0  # llama: 0 = as many as match the Mamba2 body of the same recipe
    eagle_intermediate: int = 1536  # eagle: the feed-forward width of its decoder layer (the rest follows the target)
    eagle_tokens: int = 300_000  # eagle: tokens of the target's hidden states computed (and cached) to train on
    vocab_top_k: int = 8192  # 0 = the target's whole vocabulary
    init_embeddings_from_target: bool = True
    seq_len: int = 256
    batch_size: int = 8
    # [[step, seq_len], ...]: windows grow during training, tokens per step stay seq_len x batch_size
    curriculum: list = field(default_factory=list)
    steps: int = 2000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    kd_weight: float = 0.0  # weight of the KL to the target's top-k probabilities (soft targets), where known
    prompt_weight: float = 1.0  # loss weight of prompt tokens in distillation rows (answers weigh 1)
    checkpoint_every: int = 100
    snapshot_every: int = 0  # >0: also save the drafter (float16) at every such step under OUT/snapshots/step-N
    log_every: int = 10
    seed: int = 0
    eval_prompts: int = 8  # held-out distillation prompts per domain (never trained on)
    eval_new_tokens: int = 64
    init_from: str = ""  # a drafter (shipped name or folder) of the same arch and sizes to start from (fine-tuning)
    data: list[dict] = field(default_factory=lambda: [
        {"source": "stdlib-code", "weight": 1.0},
        {"source": "distill", "set": "broad-v1", "weight": 4.0},
    ])
    notes: str = ""

    @classmethod
    def load(cls, path: str | Path) -> DrafterRecipe:
        return cls.from_dict(load_yaml(path, "recipe"), str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "recipe") -> DrafterRecipe:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise MambaspecError(f"{where}: unknown setting '{unknown[0]}'; known: {', '.join(known)}")
        defaults = cls()
        for key, value in raw.items():
            expected = type(getattr(defaults, key))
            ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
            if not ok or isinstance(value, bool) != (expected is bool):
                raise MambaspecError(f"{where}: '{key}' must be {expected.__name__}, got {value!r}")
        recipe = cls(**{**asdict(defaults), **raw})
        recipe.validate(where)
        return recipe

    def validate(self, where: str = "recipe") -> None:
        if self.arch not in ARCHS:
            raise MambaspecError(f"{where}: unknown arch '{self.arch}'; use one of {', '.join(ARCHS)}")
        for key in ("hidden_size", "num_layers", "seq_len", "batch_size", "steps", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise MambaspecError(f"{where}: '{key}' must be at least 1")
        if self.lr <= 0:
            raise MambaspecError(f"{where}: 'lr' must be positive")
        if self.kd_weight < 0 or self.prompt_weight < 0:
            raise MambaspecError(f"{where}: 'kd_weight' and 'prompt_weight' must be >= 0")
        if any(not (isinstance(c, list) and len(c) == 2 and all(isinstance(x, int) and x >= 0 for x in c))
               for c in self.curriculum):
            raise MambaspecError(f"{where}: 'curriculum' is a list of [step, seq_len] pairs, "
                                 f"e.g. [[0, 256], [1000, 1024]]")
        if self.init_from and self.arch == "eagle":
            raise MambaspecError(f"{where}: 'init_from' starts a mamba2, mamba or llama drafter; an EAGLE head trains "
                                 f"from scratch")
        if not self.data:
            raise MambaspecError(f"{where}: 'data' lists no source; add one, e.g. `- source: files` with `paths: "
                                 f"[my_texts/]` (--data files are added to a recipe's sources, they do not replace "
                                 f"them)")
        for i, src in enumerate(self.data):
            if not isinstance(src, dict) or src.get("source") not in SOURCES:
                raise MambaspecError(f"{where}: data[{i}] needs source: {', '.join(SOURCES)}")
            if src["source"] == "distill" and not src.get("set"):
                raise MambaspecError(f"{where}: data[{i}] (distill) names a data set: "
                                     f"set: NAME (recipes/data/NAME.yaml)")
            if float(src.get("weight", 1.0)) <= 0:
                raise MambaspecError(f"{where}: data[{i}] weight must be positive")
            if src.get("labels", "real") not in LABELS or (src.get("labels") and src["source"] == "distill"):
                raise MambaspecError(f"{where}: data[{i}] labels: is 'real' (the text's next token) or 'target' (the "
                                     f"target's own prediction), on a stdlib-code or files source")
            batches = src.get("batches")
            if "batches" in src and (src["source"] != "distill" or not isinstance(batches, int)
                                     or isinstance(batches, bool) or batches < 1):
                raise MambaspecError(f"{where}: data[{i}] batches: is how many of a distill set's plan batches to "
                                     f"use (its first N), a positive whole number")
            tokens = src.get("tokens")
            if "tokens" in src and (src["source"] == "distill" or not isinstance(tokens, int)
                                    or isinstance(tokens, bool) or tokens < 1):
                raise MambaspecError(f"{where}: data[{i}] tokens: is how many tokens of a stdlib-code or files source "
                                     f"to sample (and label, with labels: target), a positive whole number")

    def seq_len_at(self, step: int) -> int:
        """The window length of ``step`` (the curriculum's last entry at or before it)."""
        length = self.seq_len
        for start, n in sorted(self.curriculum):
            if step >= start:
                length = n
        return length

    def batch_at(self, step: int) -> int:
        """Sequences per step: as many as keep ``seq_len x batch_size`` tokens per step."""
        return max(1, self.seq_len * self.batch_size // self.seq_len_at(step))
