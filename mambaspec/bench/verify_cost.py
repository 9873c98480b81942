"""``mambaspec verify-cost``: what one verification forward costs, by number of tree nodes and context length.

For q tree nodes after a prefix of P tokens, times (median of ``repeats``, the sizes interleaved) the engine's
verification forward (``kv.forward_tree``: tree mask, per-node positions, the engine's cache and
attention, with ``--compile``/``--quantize`` when given) next to a plain transformers forward of
the same q tokens (a fresh ``DynamicCache`` of the prefix, the model's stock ``sdpa`` attention,
float weights, no mask: causal). Both start from the same prefix, cut back after each timing. The
tree is a chain (q nodes, each seeing its ancestors): the mask pattern does not change the work.

Each prefix's prefill (one forward, the logits of its last token only) is timed once for both, and the engine's
timings go to the target's cost store (``loading.costs``), where ``generate``'s dynamic trees start from.

Speculation pays when ``verify(γ+1 nodes) + γ·draft < τ·t(1)``; ``engine / 1 token`` is each row
over the engine's own one-token step at the same prefix (what plain decoding costs in our loop).
The floor adds to that step only the attention arithmetic of the extra rows (4 · layers · heads ·
head_dim · rows · P flops, QKᵀ and AV) at the machine's matrix-multiply rate, measured here.
"""

from __future__ import annotations

import csv
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import DynamicCache

from ..config import DEFAULT_TARGET
from ..core.engine import STATIC_CAPACITY, STATIC_TREE_ROOM
from ..core.kv import forward_chain, forward_tree, keep_slots, new_kv_cache
from ..core.static import StaticKVCache, capacities
from ..core.static import supports as static_supports
from ..errors import MambaspecError
from ..hf_compat import with_cache
from ..loading.costs import cost_store, device_name
from ..loading.options import ModelOptions

DEFAULT_NODES = (1, 2, 4, 6, 8, 16, 32)


@dataclass
class CostRow:
    prefix: int
    nodes: int
    engine_ms: float
    plain_ms: float
    engine_1_ms: float = 0.0  # the engine's one-token step at this prefix
    plain_1_ms: float = 0.0
    attention_gflop: float = 0.0
    floor_ms: float = 0.0
    engine_prefill_s: float = 0.0  # reading the prefix in one forward (logits of its last token only)
    plain_prefill_s: float = 0.0

    @property
    def engine_ratio(self) -> float:
        return self.engine_ms / self.engine_1_ms

    @property
    def plain_ratio(self) -> float:
        return self.plain_ms / self.plain_1_ms

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()} | {
            "engine_over_engine_1": round(self.engine_ratio, 3), "plain_over_plain_1": round(self.plain_ratio, 3)}


def _seconds(fn: Callable[[], None]) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def _median_ms(fn: Callable[[], None], repeats: int) -> float:
    return statistics.median(_seconds(fn) for _ in range(repeats)) * 1e3


def matmul_gflops(repeats: int = 5, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """The device's matrix-multiply rate in ``dtype`` (a 1024-cube product on the CPU, 4096 on a GPU, best of
    ``repeats``)."""
    n = 4096 if torch.device(device).type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(_median_ms(lambda: a @ b, 1) for _ in range(repeats))
    return 2 * n ** 3 / (best / 1e3) / 1e9


def attention_flops(model, rows: int, keys: int) -> float:
    """QKᵀ and AV of ``rows`` query tokens over ``keys`` cached keys, every layer and head."""
    cfg = model.config.get_text_config(decoder=True)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 4.0 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * rows * keys


@torch.inference_mode()
def measure_verify_cost(engine_model, plain_model, vocab_size: int, prefix: int = 512,
                        nodes: tuple[int, ...] = DEFAULT_NODES, repeats: int = 10, seed: int = 0,
                        gflops: float | None = None, progress: Callable[[], None] | None = None) -> list[CostRow]:
    """Median ms of one verification forward of q nodes, engine and plain, after ``prefix`` tokens."""
    if prefix < 1 or any(q < 1 for q in nodes) or repeats < 1:
        raise MambaspecError("the prefix, the node counts and the repeats must be positive")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (prefix + max(nodes),), generator=g).tolist()
    device = next(engine_model.parameters()).device
    # the engine's cache as generation uses it: static buffers and CUDA graphs on a GPU (core.static), dynamic on CPU
    static = device.type == "cuda" and static_supports(engine_model)
    # in the cache a generation of about this length goes into (its buffer's width is what a step attends over)
    capacity = next((c for c in capacities(engine_model, STATIC_CAPACITY) if c >= prefix + STATIC_TREE_ROOM), None)
    static = static and capacity is not None and prefix + max(nodes) <= capacity
    engine_cache = StaticKVCache(capacity, graphs=True) if static else new_kv_cache()
    plain_cache = DynamicCache()
    plain_prefill = _seconds(lambda: plain_model(input_ids=torch.tensor([ids[:prefix]], device=device),
                                                 **with_cache(plain_model, plain_cache), use_cache=True,
                                                 logits_to_keep=1))
    engine_prefill = _seconds(lambda: forward_chain(engine_model, engine_cache, ids[:prefix]))

    def engine_step(q: int) -> None:
        forward_tree(engine_model, engine_cache, ids[prefix:prefix + q], list(range(prefix, prefix + q)),
                     torch.ones(q, q, dtype=torch.bool).tril())
        keep_slots(engine_cache, prefix, [])

    def plain_step(q: int) -> None:
        plain_model(input_ids=torch.tensor([ids[prefix:prefix + q]], device=device),
                    **with_cache(plain_model, plain_cache), use_cache=True)
        plain_cache.crop(-q)

    sizes = sorted(set(nodes) | {1})
    for q in sizes:
        engine_step(q), plain_step(q)  # warm-up (and compilation) of every shape, untimed
    engine: dict[int, list[float]] = {q: [] for q in sizes}
    plain: dict[int, list[float]] = {q: [] for q in sizes}
    for _ in range(repeats):  # sizes interleaved: a drift of the machine's speed hits every size alike
        for q in sizes:
            engine[q].append(_seconds(lambda: engine_step(q)))
            plain[q].append(_seconds(lambda: plain_step(q)))
        if progress:
            progress()
    rows = [CostRow(prefix, q, statistics.median(engine[q]) * 1e3, statistics.median(plain[q]) * 1e3) for q in sizes]
    one = rows[0]
    rate = gflops or matmul_gflops(device=device, dtype=next(engine_model.parameters()).dtype)
    for r in rows:
        r.engine_1_ms, r.plain_1_ms = one.engine_ms, one.plain_ms
        r.engine_prefill_s, r.plain_prefill_s = engine_prefill, plain_prefill
        r.attention_gflop = attention_flops(engine_model, r.nodes, prefix) / 1e9
        r.floor_ms = one.engine_ms + (r.attention_gflop - one.attention_gflop) / rate * 1e3
    return [r for r in rows if r.nodes in nodes]


def write_csv(rows: list[CostRow], path: str | Path, settings: dict) -> Path:
    """Append the rows with their settings (target, options, threads, versions) to ``path``."""
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


def verify_cost(target: str = DEFAULT_TARGET, prefixes: tuple[int, ...] = (512,),
                nodes: tuple[int, ...] = DEFAULT_NODES, repeats: int = 10, options: ModelOptions | None = None,
                out: str | Path | None = "runs/verify-cost", progress: Callable[[int, int], None] | None = None,
                save_costs: bool = True) -> tuple[list[CostRow], dict, Path | None]:
    """Load ``target`` twice (the engine's, with its attention and the options; a stock one), measure at every
    prefix length, append to ``out``/verify_cost.csv; returns the rows, the settings and the CSV path.
    ``save_costs``: also keep the engine's timings in the target's cost store (``loading.costs``), where
    ``generate``'s dynamic trees start from."""
    import transformers

    from .. import __version__
    from ..loading.models import load_model

    options = options or ModelOptions()
    engine = load_model(target, options, role="target")
    plain = load_model(target, ModelOptions(device=options.device, dtype=options.dtype, linear="torch"),
                       role="plain").model
    context = engine.context_length
    if max(prefixes) + max(nodes) > context:
        raise MambaspecError(f"prefix {max(prefixes)} + {max(nodes)} nodes exceeds the target's context of {context}")
    vocab = plain.config.get_text_config(decoder=True).vocab_size
    rate, done, total = matmul_gflops(device=engine.device, dtype=engine.model.dtype), [0], len(prefixes) * repeats

    def step() -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    rows = [r for p in prefixes for r in measure_verify_cost(engine.model, plain, vocab, prefix=p, nodes=nodes,
                                                             repeats=repeats, gflops=rate, progress=step)]
    p = next(plain.parameters())
    settings = {"target": target, "repeats": repeats, "device": str(p.device),
                "dtype": str(p.dtype).replace("torch.", ""), "linear": options.linear, "quantize": options.quantize,
                "compile": options.compile, "engine_options": engine.optimized, "matmul_gflops": round(rate, 1),
                "threads": torch.get_num_threads(), "cpu": device_name(torch.device("cpu")),
                "torch": torch.__version__, "transformers": transformers.__version__, "mambaspec": __version__}
    path = write_csv(rows, Path(out) / "verify_cost.csv", settings) if out else None
    if save_costs:
        remember(engine, rows)
    return rows, settings, path


def remember(engine, rows: list[CostRow]) -> None:
    """Add the engine's timings to ``engine``'s cost store: a verification of q nodes is a round of q - 1 draft
    nodes (the root is the pending token) at the prefix's context."""
    store = cost_store(engine)
    store.save(store.load() + [(r.nodes - 1, r.prefix, r.engine_ms / 1e3) for r in rows])
