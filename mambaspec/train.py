"""``pretrain-drafter``: train a small drafter for a target's tokenizer.

Data: language-model pretraining text (the Python standard library's source by default, or
``--data`` files) mixed with sequence-level distillation data (the target's greedy answers to
coding prompts made from standard-library functions). The batch of step ``s`` depends only on
``(seed, s)``, so ``--resume`` from a checkpoint continues with the same data order and optimizer
state and ends where an uninterrupted run ends.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from .errors import MambaspecError
from .models import cache_dir
from .vocab import META_FILE, DraftVocab

ARCHS = ("mamba2", "mamba", "llama")


@dataclass
class DrafterRecipe:
    """Everything that defines a drafter training run (a YAML file in ``recipes/drafters/``)."""

    arch: str = "mamba2"
    hidden_size: int = 256
    num_layers: int = 4
    state_size: int = 32  # mamba / mamba2
    head_dim: int = 64  # mamba2
    expand: int = 2  # mamba / mamba2
    num_heads: int = 4  # llama (matched-size layers are chosen automatically)
    vocab_top_k: int = 8192  # 0 = the target's whole vocabulary
    init_embeddings_from_target: bool = True
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 2000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    eval_prompts: int = 8  # held-out distillation prompts (never trained on)
    eval_new_tokens: int = 64
    data: list[dict] = field(default_factory=lambda: [
        {"source": "stdlib-code", "weight": 1.0},
        {"source": "distill", "prompts": "stdlib-functions", "limit": 1500, "max_new_tokens": 160, "weight": 3.0},
    ])
    notes: str = ""

    @classmethod
    def load(cls, path: str | Path) -> DrafterRecipe:
        path = Path(path)
        if not path.is_file():
            raise MambaspecError(f"recipe file not found: {path}; see recipes/drafters/ for examples")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise MambaspecError(f"recipe {path} is not valid YAML{where}; fix the file") from None
        if not isinstance(raw, dict):
            raise MambaspecError(f"recipe {path} must be a mapping of settings, e.g. `steps: 2000`")
        return cls.from_dict(raw, str(path))

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
        if not self.data:
            raise MambaspecError(f"{where}: 'data' lists no source")
        for i, src in enumerate(self.data):
            if not isinstance(src, dict) or src.get("source") not in ("stdlib-code", "distill", "files"):
                raise MambaspecError(f"{where}: data[{i}] needs source: stdlib-code, distill or files")
            if float(src.get("weight", 1.0)) <= 0:
                raise MambaspecError(f"{where}: data[{i}] weight must be positive")


# --------------------------------------------------------------------------------------- models

def build_model(recipe: DrafterRecipe, vocab_size: int, eos_id: int | None):
    """A fresh drafter; ``llama`` is sized to match the Mamba2 model of the same recipe."""
    from transformers import (LlamaConfig, LlamaForCausalLM, Mamba2Config, Mamba2ForCausalLM, MambaConfig,
                              MambaForCausalLM)

    torch.manual_seed(recipe.seed)
    common = dict(vocab_size=vocab_size, hidden_size=recipe.hidden_size, tie_word_embeddings=True,
                  eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=None)
    if recipe.arch == "mamba2":
        heads = recipe.expand * recipe.hidden_size // recipe.head_dim
        cfg = Mamba2Config(num_hidden_layers=recipe.num_layers, state_size=recipe.state_size, expand=recipe.expand,
                           num_heads=heads, head_dim=recipe.head_dim, n_groups=1, conv_kernel=4, chunk_size=64,
                           **common)
        return Mamba2ForCausalLM(cfg)
    if recipe.arch == "mamba":
        cfg = MambaConfig(num_hidden_layers=recipe.num_layers, state_size=recipe.state_size, expand=recipe.expand,
                          **common)
        return MambaForCausalLM(cfg)
    # llama: same hidden size and embeddings; as many layers as match the Mamba2 body's parameters
    mamba_body = _body_params(build_model(DrafterRecipe(**{**asdict(recipe), "arch": "mamba2"}), vocab_size, eos_id))
    h, inter = recipe.hidden_size, int(8 * recipe.hidden_size / 3 // 8 * 8)
    per_layer = 4 * h * h + 3 * h * inter + 2 * h
    layers = max(1, round(mamba_body / per_layer))
    cfg = LlamaConfig(num_hidden_layers=layers, intermediate_size=inter, num_attention_heads=recipe.num_heads,
                      num_key_value_heads=recipe.num_heads, max_position_embeddings=8192, **common)
    return LlamaForCausalLM(cfg)


def _body_params(model) -> int:
    emb = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - emb


def init_embeddings_from_target(model, target, vocab: DraftVocab | None) -> None:
    """Input/output embeddings from a PCA of the target's embeddings (rows of the draft vocabulary)."""
    emb = target.get_input_embeddings().weight.detach().float()
    rows = emb[vocab.to_target] if vocab is not None else emb
    d = model.get_input_embeddings().weight.shape[1]
    centered = rows - rows.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centered, q=min(d, centered.shape[1]), center=False)
    proj = centered @ v[:, :d]
    proj = proj / proj.std() * 0.02  # the scale of a fresh initialisation
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[: proj.shape[0], : proj.shape[1]] = proj


# ----------------------------------------------------------------------------------------- data

def distill_path(target_name: str, src: dict) -> Path:
    key = f"{Path(target_name).name}-{src.get('prompts', 'stdlib-functions')}-{src.get('limit', 1500)}" \
          f"-n{src.get('max_new_tokens', 160)}"
    return cache_dir() / "distill" / f"{key}.jsonl"


def _tokenize_texts(tokenizer, texts: list[str]) -> torch.Tensor:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for start in range(0, len(texts), 64):
        for row in tokenizer(texts[start:start + 64])["input_ids"]:
            ids.extend(row)
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.int32)


def read_text_files(paths: list[str]) -> list[str]:
    """Text from .txt/.md/.py files, .jsonl (a text/prompt/completion field) and .parquet, or folders of them."""
    texts: list[str] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            if "/" in p and not p.startswith((".", "/")):
                texts.extend(_hub_texts(p))
                continue
            raise MambaspecError(f"--data {p}: no such file or folder")
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.suffix in (".txt", ".md", ".py", ".rst"):
                texts.append(f.read_text(errors="ignore"))
            elif f.suffix == ".jsonl":
                for line in f.read_text().splitlines():
                    if line.strip():
                        row = json.loads(line)
                        texts.append(row.get("text") or (row.get("prompt", "") + row.get("completion", "")))
            elif f.suffix == ".parquet":
                import pandas as pd

                df = pd.read_parquet(f)
                col = "text" if "text" in df.columns else df.columns[0]
                texts.extend(df[col].astype(str).tolist())
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise MambaspecError(f"--data {' '.join(paths)}: no text found (.txt/.md/.py/.jsonl/.parquet)")
    return texts


def _hub_texts(dataset_id: str) -> list[str]:
    from .models import hub_reachable

    if not hub_reachable():
        raise MambaspecError(f"--data {dataset_id}: not a local path and the hub is not reachable; pass local files")
    import datasets

    ds = datasets.load_dataset(dataset_id, split="train")
    col = "text" if "text" in ds.column_names else ds.column_names[0]
    return [str(x) for x in ds[col]]


@dataclass
class TrainingData:
    streams: list[torch.Tensor]  # token ids (target vocabulary), one stream per source
    weights: list[float]
    names: list[str]
    heldout: list[dict]  # distillation rows kept out of training, for evaluation

    def batch(self, step: int, seed: int, batch_size: int, seq_len: int) -> torch.Tensor:
        """The batch of ``step``: a pure function of (seed, step), so resuming replays the same order."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        probs = torch.tensor(self.weights) / sum(self.weights)
        which = torch.multinomial(probs, batch_size, replacement=True, generator=g).tolist()
        rows = []
        for s in which:
            stream = self.streams[s]
            start = int(torch.randint(0, max(1, len(stream) - seq_len - 1), (1,), generator=g))
            rows.append(stream[start:start + seq_len + 1].long())
        return torch.stack(rows)


def prepare_data(recipe: DrafterRecipe, target_name: str, tokenizer, get_target: Callable, extra: list[str],
                 log: Callable[[str], None]) -> TrainingData:
    from .corpus import stdlib_code, stdlib_function_prompts
    from .distill import generate_distillation_data, load_rows

    sources = list(recipe.data)
    if extra:
        sources.append({"source": "files", "paths": extra, "weight": 1.0})
    streams, weights, names, heldout = [], [], [], []
    for src in sources:
        kind = src["source"]
        if kind == "stdlib-code":
            cache = cache_dir() / "tokens" / f"{Path(target_name).name}-stdlib-code.pt"
            if cache.exists():
                ids = torch.load(cache)
            else:
                log("tokenizing the standard library's source ...")
                ids = _tokenize_texts(tokenizer, stdlib_code(src.get("max_chars")))
                cache.parent.mkdir(parents=True, exist_ok=True)
                torch.save(ids, cache)
        elif kind == "files":
            ids = _tokenize_texts(tokenizer, read_text_files(src.get("paths", [])))
        else:  # distill
            if src.get("prompts", "stdlib-functions") != "stdlib-functions":
                raise MambaspecError("distill prompts: only 'stdlib-functions' is built in")
            prompts = stdlib_function_prompts(limit=int(src.get("limit", 1500)))
            path = distill_path(target_name, src)
            have = sum(1 for _ in path.open()) if path.exists() else 0
            if have < len(prompts):
                log(f"distillation data: the target answers {len(prompts) - have} prompts -> {path}")
                target = get_target()
                generate_distillation_data(target.model, tokenizer, prompts, path,
                                           max_new_tokens=int(src.get("max_new_tokens", 160)))
            rows = load_rows(path)
            held_ids = {p["id"] for p in prompts[-recipe.eval_prompts:]} if recipe.eval_prompts else set()
            heldout.extend(r for r in rows if r["id"] in held_ids)
            train_rows = [r for r in rows if r["id"] not in held_ids]
            ids = torch.tensor([t for r in train_rows for t in r["ids"]], dtype=torch.int32)
        if len(ids) < recipe.seq_len + 2:
            raise MambaspecError(f"data source '{kind}' has only {len(ids)} tokens; give more text")
        streams.append(ids)
        weights.append(float(src.get("weight", 1.0)))
        names.append(kind)
        log(f"data source {kind}: {len(ids):,} tokens, weight {weights[-1]}")
    return TrainingData(streams, weights, names, heldout)


# ------------------------------------------------------------------------------------- training

def lr_at(step: int, recipe: DrafterRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


@dataclass
class TrainResult:
    out: Path
    steps: int
    final_loss: float
    wall_s: float
    eval: dict


def train_drafter(
    recipe: DrafterRecipe,
    target_name: str,
    out: str | Path,
    extra_data: list[str] | None = None,
    resume: bool = False,
    device: str = "cpu",
    evaluate: bool = True,
    progress: Callable[[int, int, dict], None] | None = None,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) a drafter for ``target_name``'s tokenizer into ``out``.

    ``stop_after`` ends the run after that many steps of this call (tests use it to simulate an
    interruption); the checkpoint of that step is written first.
    """
    from .models import load_model

    out = Path(out)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise MambaspecError(f"{out} already holds a training run; pass --resume to continue it or pick another --out")
    if resume and not ckpt_path.exists():
        raise MambaspecError(f"--resume: no checkpoint in {out}; start without --resume")
    out.mkdir(parents=True, exist_ok=True)

    target_holder: dict = {}

    def get_target():
        if "t" not in target_holder:
            target_holder["t"] = load_model(target_name, device=device, dtype="float32")
        return target_holder["t"]

    from transformers import AutoTokenizer

    from .models import locate

    tokenizer = AutoTokenizer.from_pretrained(locate(target_name))
    data = prepare_data(recipe, target_name, tokenizer, get_target, extra_data or [], log)
    target_vocab = len(tokenizer)
    eos = tokenizer.eos_token_id

    if resume:
        ckpt = torch.load(ckpt_path, weights_only=False)
        vocab = DraftVocab(ckpt["draft_vocab"], target_vocab) if ckpt["draft_vocab"] else None
    else:
        ckpt = None
        vocab = None
        if recipe.vocab_top_k and recipe.vocab_top_k < target_vocab:
            counts = torch.zeros(target_vocab)
            for stream, w in zip(data.streams, data.weights):
                counts += torch.bincount(stream.long(), minlength=target_vocab)[:target_vocab].float() * w / len(stream)
            vocab = DraftVocab.from_counts(counts, recipe.vocab_top_k, always=[eos])
    model_vocab = vocab.size if vocab else target_vocab
    model = build_model(recipe, model_vocab, vocab.to_draft[eos].item() if vocab else eos)
    if ckpt is None and recipe.init_embeddings_from_target:
        init_embeddings_from_target(model, get_target().model, vocab)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.95))
    start_step, elapsed_before = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_step, elapsed_before = ckpt["step"], ckpt["wall_s"]
        log(f"resuming at step {start_step}")

    metrics_path = out / "metrics.csv"
    if not resume and metrics_path.exists():
        metrics_path.unlink()
    to_draft = vocab.to_draft if vocab else None
    ignore = vocab.size - 1 if vocab else -100
    t_start = time.perf_counter()
    loss_ema, tokens_seen, step = None, 0, start_step
    end = recipe.steps if stop_after is None else min(recipe.steps, start_step + stop_after)
    for step in range(start_step, end):
        batch = data.batch(step, recipe.seed, recipe.batch_size, recipe.seq_len)
        if to_draft is not None:
            batch = to_draft[batch]
        batch = batch.to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 batch[:, 1:].reshape(-1), ignore_index=ignore)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        tokens_seen += batch[:, 1:].numel()
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        done = step + 1
        elapsed = time.perf_counter() - t_start
        info = {"loss": loss_ema, "tok_s": tokens_seen / elapsed, "lr": lr_at(step, recipe)}
        if progress is not None:
            progress(done, recipe.steps, info)
        if done % recipe.log_every == 0 or done == recipe.steps:
            new = not metrics_path.exists()
            with metrics_path.open("a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", "loss", "loss_ema", "lr", "tokens_per_s", "wall_s"])
                w.writerow([done, f"{loss.item():.4f}", f"{loss_ema:.4f}", f"{info['lr']:.6f}",
                            f"{info['tok_s']:.0f}", f"{elapsed_before + elapsed:.1f}"])
        if done % recipe.checkpoint_every == 0 or done == end:
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                          "wall_s": elapsed_before + elapsed, "recipe": asdict(recipe),
                          "draft_vocab": vocab.target_ids if vocab else None}, ckpt_path)
    wall = elapsed_before + (time.perf_counter() - t_start)
    final_step = step + 1 if end > start_step else start_step
    if final_step < recipe.steps:
        return TrainResult(out, final_step, loss_ema or float("nan"), wall, {})

    model.eval()
    meta = {"tokenizer": target_name, "arch": recipe.arch, "target_vocab_size": target_vocab,
            "parameters": sum(p.numel() for p in model.parameters()), "steps": recipe.steps,
            "wall_s": round(wall, 1), "recipe": asdict(recipe),
            "data": {n: int(len(s)) for n, s in zip(data.names, data.streams)}}
    if vocab is not None:
        meta["draft_vocab"] = vocab.target_ids
    model.to(torch.float16).save_pretrained(out)
    (out / META_FILE).write_text(json.dumps(meta))
    model.to(torch.float32)
    results = {}
    if evaluate and data.heldout:
        from .evaluate import evaluate_drafter

        log("evaluating on held-out prompts ...")
        results = evaluate_drafter(out, get_target(), data.heldout, recipe.eval_new_tokens)
        (out / "eval.json").write_text(json.dumps(results, indent=2))
    write_card(out, meta, results)
    return TrainResult(out, recipe.steps, loss_ema or float("nan"), wall, results)


def write_card(out: Path, meta: dict, results: dict) -> None:
    size = sum(f.stat().st_size for f in out.iterdir() if f.name in ("model.safetensors", "config.json", META_FILE))
    r = meta["recipe"]
    lines = [
        f"# {out.name}", "",
        f"A `{meta['arch']}` drafter for `{meta['tokenizer']}`, trained by `mambaspec pretrain-drafter`.", "",
        "| | |", "|---|---|",
        f"| architecture | {meta['arch']}, hidden {r['hidden_size']}, {meta['recipe']['num_layers']} layers (recipe) |",
        f"| parameters | {meta['parameters']:,} |",
        f"| size on disk | {size / 2**20:.1f} MiB (float16) |",
        f"| draft vocabulary | {len(meta.get('draft_vocab', [])) or 'full'} tokens |",
        f"| data (tokens per source) | {', '.join(f'{k}: {v:,}' for k, v in meta['data'].items())} |",
        f"| steps × batch × length | {r['steps']} × {r['batch_size']} × {r['seq_len']} |",
        f"| training wall time | {meta['wall_s'] / 60:.1f} min |",
    ]
    for k, v in results.items():
        lines.append(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def copy_release(out: Path, dest: Path) -> None:
    """Copy a finished drafter without its checkpoint (what ships in the package)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", "model.safetensors", META_FILE, "eval.json", "README.md"):
        if (out / name).exists():
            shutil.copy2(out / name, dest / name)
