"""``mambaspec verify-cost``: what one verification forward costs, by number of tree nodes.

For q tree nodes after a prefix of P tokens, times (median of ``repeats``) the engine's
verification forward (``kv.forward_tree``: tree mask, per-node positions, the engine's cache
and attention, with ``--compile``/``--quantize`` when given) next to a plain transformers
forward of the same q tokens (a fresh ``DynamicCache`` of the prefix, the model's stock
``sdpa`` attention, float weights, no mask: causal). Both start from the same prefix, which is
cut back after each timing. The tree is a chain (q nodes, each seeing its ancestors): the mask
pattern does not change the work.

Speculation pays when ``verify(γ+1 nodes) + γ·draft < τ·t(1)``; the ratio column is each row
over the plain one-token step.
"""

from __future__ import annotations

import csv
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import DynamicCache

from ..core.kv import forward_tree, keep_slots, new_kv_cache
from ..config import DEFAULT_TARGET
from ..errors import MambaspecError
from ..loading.options import ModelOptions

DEFAULT_NODES = (1, 2, 4, 5, 8, 16, 32)


@dataclass
class CostRow:
    nodes: int
    engine_ms: float
    plain_ms: float
    plain_1_ms: float

    @property
    def engine_ratio(self) -> float:
        return self.engine_ms / self.plain_1_ms

    @property
    def plain_ratio(self) -> float:
        return self.plain_ms / self.plain_1_ms

    def as_dict(self) -> dict:
        return {"nodes": self.nodes, "engine_ms": round(self.engine_ms, 2), "plain_ms": round(self.plain_ms, 2),
                "engine_over_plain_1": round(self.engine_ratio, 3), "plain_over_plain_1": round(self.plain_ratio, 3)}


def _median_ms(fn: Callable[[], None], repeats: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


@torch.inference_mode()
def measure_verify_cost(engine_model, plain_model, vocab_size: int, prefix: int = 512,
                        nodes: tuple[int, ...] = DEFAULT_NODES, repeats: int = 10, seed: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> list[CostRow]:
    """Median ms of one verification forward of q nodes, engine and plain, after ``prefix`` tokens."""
    if prefix < 1 or any(q < 1 for q in nodes) or repeats < 1:
        raise MambaspecError("--prefix, --nodes and --repeats must be positive")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (prefix + max(nodes),), generator=g).tolist()
    device = next(engine_model.parameters()).device

    engine_cache = new_kv_cache()
    forward_tree(engine_model, engine_cache, ids[:prefix], list(range(prefix)),
                 torch.ones(prefix, prefix, dtype=torch.bool).tril())
    plain_cache = DynamicCache()
    plain_model(input_ids=torch.tensor([ids[:prefix]], device=device), past_key_values=plain_cache, use_cache=True,
                logits_to_keep=1)

    rows: list[CostRow] = []
    for i, q in enumerate(nodes):
        tokens = ids[prefix:prefix + q]
        visible = torch.ones(q, q, dtype=torch.bool).tril()

        def engine_step() -> None:
            forward_tree(engine_model, engine_cache, tokens, list(range(prefix, prefix + q)), visible)
            keep_slots(engine_cache, prefix, [])

        def plain_step() -> None:
            plain_model(input_ids=torch.tensor([tokens], device=device), past_key_values=plain_cache, use_cache=True)
            plain_cache.crop(-q)

        engine_step(), plain_step()  # warm-up (and compilation) of this shape, untimed
        rows.append(CostRow(q, _median_ms(engine_step, repeats), _median_ms(plain_step, repeats), 0.0))
        if progress:
            progress(i + 1, len(nodes))
    one = next((r.plain_ms for r in rows if r.nodes == 1), None)
    if one is None:  # the reference step is always measured
        tokens = ids[prefix:prefix + 1]
        one = _median_ms(lambda: (plain_model(input_ids=torch.tensor([tokens], device=device),
                                              past_key_values=plain_cache, use_cache=True),
                                  plain_cache.crop(-1)), repeats)
    for r in rows:
        r.plain_1_ms = one
    return rows


def write_csv(rows: list[CostRow], path: str | Path, settings: dict) -> Path:
    """Append the rows with their settings (target, prefix, options, threads, versions) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [*rows[0].as_dict().keys(), *settings.keys()]
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**r.as_dict(), **settings})
    return path


def verify_cost(target: str = DEFAULT_TARGET, prefix: int = 512, nodes: tuple[int, ...] = DEFAULT_NODES,
                repeats: int = 10, options: ModelOptions | None = None, out: str | Path | None = "runs/verify-cost",
                progress: Callable[[int, int], None] | None = None) -> tuple[list[CostRow], dict, Path | None]:
    """Load ``target`` twice (the engine's, with its attention and the options; a stock one), measure,
    append to ``out``/verify_cost.csv; returns the rows, the settings and the CSV path."""
    import platform

    import transformers

    from .. import __version__
    from ..loading.models import load_model

    options = options or ModelOptions()
    engine = load_model(target, options, role="target")
    plain = load_model(target, ModelOptions(device=options.device, dtype=options.dtype, linear="torch"),
                       role="plain").model
    context = engine.context_length
    if prefix + max(nodes) > context:
        raise MambaspecError(f"prefix {prefix} + {max(nodes)} nodes exceeds the target's context of {context}")
    vocab = plain.config.get_text_config(decoder=True).vocab_size
    rows = measure_verify_cost(engine.model, plain, vocab, prefix=prefix, nodes=nodes, repeats=repeats,
                               progress=progress)
    p = next(plain.parameters())
    settings = {"target": target, "prefix": prefix, "repeats": repeats, "device": str(p.device),
                "dtype": str(p.dtype).replace("torch.", ""), "linear": options.linear, "quantize": options.quantize,
                "compile": options.compile, "engine_options": engine.optimized, "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                "transformers": transformers.__version__, "mambaspec": __version__}
    path = write_csv(rows, Path(out) / "verify_cost.csv", settings) if out else None
    return rows, settings, path
