"""``pretrain-drafter``: train a small drafter for a target's tokenizer.

Next-token cross-entropy on every source (language-model text and the target's own answers),
plus, with ``kd_weight``, the KL divergence to the target's top-k distribution at every answer
token (soft targets; DistillSpec, arXiv 2310.08461). The batch of step ``s`` depends only on
``(seed, s)`` and checkpoints hold the optimizer, so ``resume`` continues with the same data order
and ends where an uninterrupted run ends.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..config import write_atomically
from ..drafters.vocab import META_FILE, DraftVocab
from ..errors import MambaspecError
from .data import Batch, TrainingData, prepare_data
from .recipe import DrafterRecipe

METRICS = ["step", "loss", "loss_ema", "lr", "tokens_per_s", "wall_s"]


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
    h, inter = recipe.hidden_size, int(8 * recipe.hidden_size / 3 // 8 * 8)
    layers = recipe.llama_layers
    if not layers:  # as many layers as match the Mamba2 body of the same recipe
        mamba_body = _body_params(build_model(DrafterRecipe(**{**asdict(recipe), "arch": "mamba2"}), vocab_size,
                                              eos_id))
        layers = max(1, round(mamba_body / (4 * h * h + 3 * h * inter + 2 * h)))
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


def lr_at(step: int, recipe: DrafterRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def loss_of(model, batch: Batch, vocab: DraftVocab | None, recipe: DrafterRecipe, device) -> torch.Tensor:
    """Weighted next-token cross-entropy (on the target's own labels where a stream has them), plus ``kd_weight`` x
    KL(target top-k || drafter) where soft targets exist."""
    ids = batch.ids.to(device)
    inputs, labels = ids[:, :-1], (batch.labels.to(device) if batch.labels is not None else ids[:, 1:])
    if vocab is not None:
        inputs, labels = vocab.encode(inputs), vocab.encode(labels)
    logits = model(input_ids=inputs).logits.float()
    logp = F.log_softmax(logits, dim=-1)
    weight = batch.weight.to(device)
    if vocab is not None:  # a token outside the draft vocabulary (the bucket) is never a target
        weight = weight * (labels != vocab.size - 1)
    nll = -logp.gather(-1, labels[..., None])[..., 0]
    loss = (nll * weight).sum() / weight.sum().clamp_min(1)
    if recipe.kd_weight > 0 and batch.soft_ids is not None:
        teacher = batch.soft_logp.to(device)
        known = torch.isfinite(teacher[..., 0])
        if known.any():
            cols = batch.soft_ids.to(device).long()
            if vocab is not None:
                cols = vocab.encode(cols)
            p = torch.softmax(teacher.masked_fill(~torch.isfinite(teacher), -1e4), dim=-1)  # top-k, renormalised
            p = p * (cols != (vocab.size - 1 if vocab is not None else -1))  # no mass on the bucket
            p = p / p.sum(-1, keepdim=True).clamp_min(1e-9)
            kl = (p * (torch.log(p.clamp_min(1e-9)) - logp.gather(-1, cols))).sum(-1)
            loss = loss + recipe.kd_weight * kl[known].mean()
    return loss


@dataclass
class TrainResult:
    out: Path
    steps: int
    final_loss: float
    wall_s: float
    eval: dict


@dataclass
class _Setup:
    data: TrainingData
    vocab: DraftVocab | None
    model: Any
    opt: torch.optim.Optimizer
    start_step: int
    wall_before: float
    target_vocab: int
    loss: Callable[[Any, Any], torch.Tensor]  # (model, batch) -> loss
    data_key: list  # [tokens, weight] per stream: checked when a run resumes
    loss_ema: float  # where the smoothed loss stood at the checkpoint (nan: a fresh run)


def train_drafter(recipe: DrafterRecipe, target_name: str, out: str | Path, extra_data: list[str] | None = None,
                  resume: bool = False, device: str = "cpu", evaluate: bool = True,
                  progress: Callable[[int, int, dict], None] | None = None, log: Callable[[str], None] = print,
                  stop_after: int | None = None, deadline: float | None = None) -> TrainResult:
    """Train (or resume) a drafter for ``target_name``'s tokenizer into ``out``.

    ``stop_after`` ends the run after that many steps of this call (tests use it to simulate an
    interruption); the checkpoint of that step is written first. ``deadline`` (``time.time()``, default
    ``$MAMBASPEC_TRAIN_UNTIL``): a time cap; the first steps measure the pace, and the run is shortened to the steps
    that fit (its schedule and curriculum scaled to them), so it still ends annealed, saved and evaluated.
    """
    out = Path(out)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise MambaspecError(f"{out} already holds a training run; continue it with --resume, "
                             f"or pick another --out folder")
    if resume and not ckpt_path.exists():
        if not out.is_dir():
            raise MambaspecError(f"no run in {out} to resume (the folder does not exist); check --out, or start a new "
                                 f"run without --resume")
        # A run stopped before its first checkpoint (while making its data, say): the data made so far is kept
        # (data sets and token caches resume on their own), so continuing it is starting its training at step 0.
        log(f"no checkpoint in {out} yet (the run stopped before its first one): training starts at step 0; "
            f"the data made so far is kept")
        resume = False
    out.mkdir(parents=True, exist_ok=True)
    target = _TargetOnDemand(target_name, device)
    setup = _setup(recipe, target, extra_data or [], ckpt_path if resume else None, device, log)
    metrics = out / "metrics.csv"
    _trim_metrics(metrics, setup.start_step)  # rows logged after the checkpoint are logged again
    end = recipe.steps if stop_after is None else min(recipe.steps, setup.start_step + stop_after)
    snapshot = lambda step, wall: _snapshot(recipe, setup, target_name, out, step, wall)  # noqa: E731
    deadline = deadline or float(os.environ.get("MAMBASPEC_TRAIN_UNTIL", 0)) or None
    if deadline is not None and end == recipe.steps:
        recipe = _fit_to_time(recipe, setup, deadline, lambda n: _train_steps(
            recipe, setup, n, device, ckpt_path, metrics, progress, snapshot), log)
        end = recipe.steps
    loss_ema, wall = _train_steps(recipe, setup, end, device, ckpt_path, metrics, progress, snapshot)
    if end < recipe.steps:
        return TrainResult(out, end, loss_ema, wall, {})
    meta = _save(recipe, setup, target_name, out, wall)
    results = {}
    if evaluate and setup.data.heldout:
        from .evaluate import evaluate_drafter

        log(f"evaluating on {len(setup.data.heldout)} held-out rows ...")
        results = evaluate_drafter(out, target.get(), setup.data.heldout, recipe.eval_new_tokens,
                                   per_domain=recipe.eval_prompts)
        (out / "eval.json").write_text(json.dumps(results, indent=2))
    elif evaluate:
        log("no held-out distillation rows (the recipe has no distill source): evaluation skipped")
    write_card(out, meta, results)
    return TrainResult(out, recipe.steps, loss_ema, wall, results)


def _fit_to_time(recipe: DrafterRecipe, s: _Setup, deadline: float, run: Callable[[int], tuple[float, float]],
                 log: Callable[[str], None]) -> DrafterRecipe:
    """Run the first steps (``run(end)``), timing all but the first few (warm-up), and return the recipe shortened to
    the steps that fit before ``deadline`` (curriculum steps scaled alike); the steps already run fit either way."""
    probe = min(recipe.steps, s.start_step + max(10, min(40, recipe.warmup_steps // 2)))
    warm = min(probe, s.start_step + 5)
    for stop in (warm, probe):
        t0 = time.time()
        s.loss_ema, s.wall_before = run(stop)
        s.start_step = stop
    per_step = (time.time() - t0) / max(1, probe - warm)
    fit = probe + int(max(0.0, deadline - time.time()) / per_step * 0.95)
    if fit >= recipe.steps:
        return recipe
    scale = fit / recipe.steps
    log(f"time cap: {per_step * 1000:.0f} ms a step, so {fit:,} of {recipe.steps:,} steps (schedule scaled to them)")
    return replace(recipe, steps=fit, warmup_steps=max(1, int(recipe.warmup_steps * scale)),
                   curriculum=[[int(step * scale), n] for step, n in recipe.curriculum])


class _TargetOnDemand:
    """The target model, loaded the first time something needs it (data making, embeddings, evaluation)."""

    def __init__(self, name: str, device: str) -> None:
        self.name, self.device, self._loaded = name, device, None

    def get(self):
        if self._loaded is None:
            from ..loading.models import load_model
            from ..loading.options import ModelOptions
            from .datagen import target_dtype

            self._loaded = load_model(self.name, ModelOptions(device=self.device, dtype=target_dtype(self.device)))
        return self._loaded


def _setup(recipe: DrafterRecipe, target: _TargetOnDemand, extra: list[str], ckpt_path: Path | None, device: str,
           log: Callable[[str], None]) -> _Setup:
    from transformers import AutoTokenizer

    from ..loading.models import locate

    tokenizer = AutoTokenizer.from_pretrained(locate(target.name))
    eagle = recipe.arch == "eagle"
    if eagle:
        from .eagle import feature_data

        data = feature_data(recipe, target.name, target.get, log)
        streams = [(data.ids, 1.0)]
    else:
        data = prepare_data(recipe, target.name, tokenizer, target.get, extra, log)
        streams = [(s.ids, s.weight) for s in data.streams]
    target_vocab, eos = len(tokenizer), tokenizer.eos_token_id
    ckpt = torch.load(ckpt_path, weights_only=False) if ckpt_path else None
    data_key = [[int(len(ids)), float(weight)] for ids, weight in streams]  # what the batches are cut from
    if ckpt is not None:
        _check_resume(ckpt, recipe, data_key)
        vocab = DraftVocab(ckpt["draft_vocab"], target_vocab) if ckpt["draft_vocab"] else None
    elif recipe.init_from:
        vocab = _init_vocab(recipe.init_from, target_vocab)
    elif recipe.vocab_top_k and recipe.vocab_top_k < target_vocab:
        counts = torch.zeros(target_vocab)
        for ids, weight in streams:
            counts += torch.bincount(ids.long(), minlength=target_vocab)[:target_vocab].float() * weight / len(ids)
        vocab = DraftVocab.from_counts(counts, recipe.vocab_top_k, always=[eos])
    else:
        vocab = None
    if eagle:
        from .eagle import build_head, eagle_loss

        model = build_head(recipe, target.get().model, vocab)
        embed = target.get().model.get_input_embeddings()
        loss = lambda m, b: eagle_loss(m, b, vocab, embed, device)  # noqa: E731
    else:
        model = build_model(recipe, vocab.size if vocab else target_vocab, int(vocab.to_draft[eos]) if vocab else eos)
        loss = lambda m, b: loss_of(m, b, vocab, recipe, device)  # noqa: E731
    if ckpt is None and recipe.init_from:
        _init_weights(model, recipe.init_from, log)
    elif ckpt is None and recipe.init_embeddings_from_target and not eagle:
        init_embeddings_from_target(model, target.get().model, vocab)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.95))
    start, wall, loss_ema = 0, 0.0, float("nan")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, wall, loss_ema = ckpt["step"], ckpt["wall_s"], ckpt.get("loss_ema", loss_ema)
        log(f"resuming at step {start}")
    return _Setup(data, vocab, model, opt, start, wall, target_vocab, loss, data_key, loss_ema)


def init_meta(name: str) -> tuple[Path, dict]:
    """The folder and metadata of the drafter a run starts from (``init_from``); a clear error if it is none."""
    from ..loading.models import locate

    folder = Path(locate(name))
    meta_file = folder / META_FILE
    if not meta_file.exists():
        raise MambaspecError(f"init_from: {name} is not a drafter trained by mambaspec (no {META_FILE}); name a "
                             f"shipped drafter or a pretrain-drafter output folder")
    return folder, json.loads(meta_file.read_text())


def _init_vocab(name: str, target_vocab: int) -> DraftVocab | None:
    """The draft vocabulary of the drafter a run starts from (its output rows are kept as they are)."""
    _, meta = init_meta(name)
    if meta.get("target_vocab_size", target_vocab) != target_vocab:
        raise MambaspecError(f"init_from: {name} drafts for a vocabulary of {meta['target_vocab_size']:,} tokens, "
                             f"this target has {target_vocab:,}; start from a drafter of this target")
    return DraftVocab(meta["draft_vocab"], target_vocab) if meta.get("draft_vocab") else None


def _init_weights(model, name: str, log: Callable[[str], None]) -> None:
    """Load the weights of drafter ``name`` into the freshly built ``model`` (same arch and sizes)."""
    from safetensors.torch import load_file

    folder, meta = init_meta(name)
    state = load_file(str(folder / "model.safetensors"))
    own = model.state_dict()
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    wrong = sorted(k for k in own if k not in tied and (k not in state or state[k].shape != own[k].shape))
    extra = sorted(set(state) - set(own))
    if wrong or extra:
        raise MambaspecError(f"init_from: {name} ({meta.get('arch')}) does not match this recipe's drafter "
                             f"({(wrong or extra)[0]} differs); give the recipe its arch and sizes")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)  # tied weights appear once
    log(f"starting from the weights of {name} (step {meta.get('steps', '?')})")


def _check_resume(ckpt: dict, recipe: DrafterRecipe, data_key: list) -> None:
    """Refuse to continue a checkpoint under other settings or other data: the schedule and the batch order would
    silently change (a resumed run must end where an uninterrupted one ends)."""
    then, now = ckpt.get("recipe", {}), asdict(recipe)
    changed = sorted(k for k, v in now.items() if k != "notes" and then.get(k, v) != v)
    if changed:
        raise MambaspecError(f"--resume: the checkpoint was made with other settings ({', '.join(changed)}); resume "
                             f"with the recipe and options it started with, or start afresh in another --out")
    if ckpt.get("data", data_key) != data_key:
        raise MambaspecError("--resume: the training data differ from the checkpoint's (a data set grew, or --data "
                             "names other files); resume with the same data, or start afresh in another --out")


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics rows up to ``step`` (a fresh run: none)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= step]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRICS)
            w.writeheader()
            w.writerows(rows)

    write_atomically(path, write)


def _train_steps(recipe: DrafterRecipe, s: _Setup, end: int, device: str, ckpt_path: Path, metrics: Path,
                 progress, snapshot: Callable[[int, float], None]) -> tuple[float, float]:
    t_start = time.perf_counter()
    loss_ema, tokens = s.loss_ema, 0
    for step in range(s.start_step, end):
        batch = s.data.batch(step, recipe)
        for group in s.opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        loss = s.loss(s.model, batch)
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), recipe.grad_clip)
        s.opt.step()
        tokens += batch.weight.numel()
        loss_ema = loss.item() if loss_ema != loss_ema else 0.9 * loss_ema + 0.1 * loss.item()
        done, elapsed = step + 1, time.perf_counter() - t_start
        if progress is not None:
            progress(done, recipe.steps, {"loss": loss_ema, "tok_s": tokens / elapsed, "lr": lr_at(step, recipe)})
        if done % recipe.log_every == 0 or done == recipe.steps:
            _log_metrics(metrics, [done, f"{loss.item():.4f}", f"{loss_ema:.4f}", f"{lr_at(step, recipe):.6f}",
                                   f"{tokens / elapsed:.0f}", f"{s.wall_before + elapsed:.1f}"])
        if done % recipe.checkpoint_every == 0 or done == end:
            ckpt = {"model": s.model.state_dict(), "optimizer": s.opt.state_dict(), "step": done,
                    "wall_s": s.wall_before + elapsed, "recipe": asdict(recipe), "data": s.data_key,
                    "loss_ema": loss_ema, "draft_vocab": s.vocab.target_ids if s.vocab else None}
            write_atomically(ckpt_path, lambda tmp: torch.save(ckpt, tmp))
        if recipe.snapshot_every and done % recipe.snapshot_every == 0 and done < recipe.steps:
            snapshot(done, s.wall_before + elapsed)
    return loss_ema, s.wall_before + time.perf_counter() - t_start


def _log_metrics(path: Path, row: list) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(METRICS)
        w.writerow(row)


def _snapshot(recipe: DrafterRecipe, s: _Setup, target_name: str, out: Path, step: int, wall: float) -> None:
    """The drafter as it stands at ``step``, saved like the final one under ``out/snapshots/step-N`` (a copy: the
    training weights stay float32), for the learning curve (``bench --drafter out/snapshots/step-N``)."""
    frozen = replace(s, model=copy.deepcopy(s.model))  # _save casts the copy, not the training weights
    where = out / "snapshots" / f"step-{step:05d}"
    where.mkdir(parents=True, exist_ok=True)
    meta = _save(recipe, frozen, target_name, where, wall)
    meta["step"] = step
    (where / META_FILE).write_text(json.dumps(meta))


def _save(recipe: DrafterRecipe, s: _Setup, target_name: str, out: Path, wall: float) -> dict:
    """The drafter in float16 (``save_pretrained``) and its ``mambaspec.json``; returns that meta."""
    s.model.eval()
    streams = getattr(s.data, "streams", None)
    meta = {"tokenizer": target_name, "arch": recipe.arch, "target_vocab_size": s.target_vocab,
            "parameters": sum(p.numel() for p in s.model.parameters()), "steps": recipe.steps,
            "wall_s": round(wall, 1), "recipe": asdict(recipe),
            "data": {st.name: int(len(st.ids)) for st in streams} if streams else {"distill+features": len(s.data.ids)}}
    if s.vocab is not None:
        meta["draft_vocab"] = s.vocab.target_ids
    if recipe.arch == "eagle":
        from ..drafters.eagle import save_head

        save_head(s.model, out, meta)
        return meta
    s.model.to(torch.float16).save_pretrained(out)
    (out / META_FILE).write_text(json.dumps(meta))
    for f in out.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; a shipped drafter is read by everyone
    s.model.to(torch.float32)
    return meta


def write_card(out: Path, meta: dict, results: dict) -> None:
    size = sum(f.stat().st_size for f in out.iterdir() if f.name in ("model.safetensors", "config.json", META_FILE))
    r = meta["recipe"]
    cfg = json.loads((out / "config.json").read_text())  # what was built (an EAGLE head ignores the recipe's sizes)
    hidden, layers = cfg.get("hidden_size", cfg.get("hidden")), cfg.get("num_hidden_layers", 1)
    lines = [
        f"# {out.name}", "",
        f"A `{meta['arch']}` drafter for `{meta['tokenizer']}`, trained by `mambaspec pretrain-drafter`.", "",
        "| | |", "|---|---|",
        f"| architecture | {meta['arch']}, hidden {hidden}, {layers} layer{'s' * (layers > 1)} |",
        f"| parameters | {meta['parameters']:,} |",
        f"| size on disk | {size / 2**20:.1f} MiB (float16) |",
        f"| draft vocabulary | {len(meta.get('draft_vocab', [])) or 'full'} tokens |",
        f"| data (tokens per source) | {', '.join(f'{k}: {v:,}' for k, v in meta['data'].items())} |",
        f"| steps × batch × length | {r['steps']} × {r['batch_size']} × {r['seq_len']}"
        + (f" (curriculum {r['curriculum']})" if r.get("curriculum") else "") + " |",
        f"| training wall time | {meta['wall_s'] / 60:.1f} min |",
    ]
    for k, v in _flat(results).items():
        lines.append(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def _flat(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
