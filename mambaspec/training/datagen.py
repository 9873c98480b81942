"""Distillation data made by the target itself: prompts it writes (Magpie), templated and document
prompts, and its answers with its top-k log-probabilities at every answer token.

A data recipe (``recipes/data/*.yaml``) defines the whole set; ``make_data`` builds it into
``$MAMBASPEC_CACHE/data/NAME/``:

- ``magpie-raw.jsonl``: the target's raw user turns, one line per batch (resume skips done batches);
- ``prompts.jsonl``: every prompt with its domain, source and split (``train`` or ``heldout``: the
  last ``heldout_per_domain`` of each domain, never trained on);
- ``answers/shard-NNNNN.pt``: one file per answered batch, written atomically, in a fixed plan
  order (held-out prompts first, then a seeded shuffle), so a rerun skips finished shards and
  ends with exactly the data an uninterrupted run makes.

Sequence-level distillation (Kim & Rush 2016) with the target's own answers; Magpie prompts
(Xu et al. 2024, arXiv 2406.08464); top-k soft targets as in DistillSpec (arXiv 2310.08461).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..config import write_atomically
from ..core.kv import new_kv_cache
from ..core.sampling import SamplingConfig, inverse_cdf_draw, warp
from ..errors import MambaspecError
from ..hf_compat import with_cache
from .corpus import stdlib_function_prompts
from .data_recipe import DataRecipe, MagpieSettings, MultiturnSettings
from .datapack import restore_packs, shard_path
from .plan import duration
from .sources import document_prompts, template_prompts

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------- magpie

def _user_prefix(tokenizer, system: str) -> list[int]:
    """The chat template up to where the user's words start, after ``system``'s turn."""
    mark = "\x00USER\x00"
    text = tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": mark}],
                                         tokenize=False)
    return tokenizer(text[: text.index(mark)], add_special_tokens=False)["input_ids"]


def _keep_user_turn(text: str) -> bool:
    return (20 <= len(text) <= 1200 and len(text.split()) >= 4 and "<|" not in text
            and not text.lower().startswith(("sure", "certainly", "of course")))


def _dedup_key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower())[:10])


MAGPIE_SLACK = 0.125  # Magpie's batches are wide: ended turns ride along until an eighth has ended (see _decode)


@torch.inference_mode()
def magpie_prompts(model, tokenizer, cfg: MagpieSettings, seed: int, folder: Path, log: Log) -> list[dict]:
    """User turns the target writes itself (its chat template up to the user's turn), filtered and deduplicated."""
    raw_path = folder / "magpie-raw.jsonl"
    systems = list(cfg.systems) or list(MagpieSettings.systems)
    batch, attempts = cfg.batch_size, cfg.attempts
    done = {json.loads(line)["batch"] for line in raw_path.read_text().splitlines()} if raw_path.exists() else set()
    eos = tokenizer.eos_token_id
    n_batches = -(-attempts // batch)
    sampling = SamplingConfig(temperature=float(cfg.temperature), top_p=float(cfg.top_p))
    t0 = time.perf_counter()
    for b in range(n_batches):
        if b in done:
            continue
        system = systems[b % len(systems)]
        gen = torch.Generator().manual_seed(seed * 100_003 + b)
        turns, _ = _decode(model, [_user_prefix(tokenizer, system)] * batch, [cfg.max_new_tokens] * batch, [0] * batch,
                           [gen], sampling, eos, eos, 1, slack=MAGPIE_SLACK)
        # an unfinished turn (no EOS) is dropped
        texts = [tokenizer.decode(turn[:-1]).strip() if turn[-1] == eos else None for turn in turns]
        with raw_path.open("a") as f:
            f.write(json.dumps({"batch": b, "system": b % len(systems), "texts": texts}) + "\n")
        log(f"magpie: batch {b + 1}/{n_batches} ({time.perf_counter() - t0:.0f} s)")
    prompts, seen = [], set()
    for line in sorted(raw_path.read_text().splitlines(), key=lambda s: json.loads(s)["batch"]):
        rec = json.loads(line)
        for i, text in enumerate(rec["texts"]):
            if text is None or not _keep_user_turn(text):
                continue
            key = _dedup_key(text)
            if key in seen:
                continue
            seen.add(key)
            prompts.append({"id": f"magpie-{rec['batch']}-{i}", "domain": "chat", "source": f"magpie:{rec['system']}",
                            "prompt": text})
    return prompts


# -------------------------------------------------------------------------------------- prompts

def build_prompt_set(recipe: DataRecipe, model, tokenizer, log: Log) -> list[dict]:
    """Every prompt of the recipe (``prompts.jsonl``, made once), with its split."""
    path = recipe.folder / "prompts.jsonl"
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines()]
    recipe.folder.mkdir(parents=True, exist_ok=True)
    # Magpie first: it is the long part and resumes batch by batch, so a rerun of an interrupted set goes on with it
    # at once (the documents, rendered again on every run until the prompt set is written, take minutes).
    magpie = magpie_prompts(model, tokenizer, recipe.magpie, recipe.seed, recipe.folder, log) if recipe.magpie else []
    prompts: list[dict] = []
    docs = recipe.documents
    if docs:
        doc_prompts, sentences = document_prompts(
            docs.short, docs.long, tuple(docs.short_tokens), tuple(docs.long_tokens), tokenizer, recipe.seed, log)
        prompts += doc_prompts
    else:
        sentences = []
    prompts += template_prompts(recipe.templates, recipe.seed, sentences)
    if recipe.stdlib_functions:
        prompts += [{**p, "id": f"stdlib-{p['id']}", "domain": "code", "source": "stdlib-function"}
                    for p in stdlib_function_prompts(limit=recipe.stdlib_functions, seed=recipe.seed)]
    prompts += magpie
    if recipe.multiturn:
        multiturn(prompts, recipe.multiturn, recipe.seed)
    by_domain: dict[str, list[dict]] = {}
    for p in prompts:
        by_domain.setdefault(p["domain"], []).append(p)
    for rows in by_domain.values():
        for i, p in enumerate(rows):
            p["split"] = "heldout" if i >= len(rows) - recipe.heldout_per_domain else "train"
    write_atomically(path, lambda tmp: tmp.write_text("".join(json.dumps(p) + "\n" for p in prompts)))
    log(f"prompts: {len(prompts)} ({', '.join(f'{d} {len(r)}' for d, r in sorted(by_domain.items()))}) -> {path}")
    return prompts


def multiturn(prompts: list[dict], cfg: MultiturnSettings, seed: int) -> None:
    """Make ``cfg.conversations`` of the prompts (seeded; of ``from_domains``, all but documents by default)
    multi-turn, in place: their domain becomes ``multiturn`` (so held-out conversations stay whole and out of
    training) and they get 1-2 follow-up user turns (``followups``: lists per first domain, ``any`` for all)."""
    rng = random.Random(seed * 7_919 + 17)
    lo, hi = cfg.turns
    domains = set(cfg.from_domains or {p["domain"] for p in prompts} - {"documents"})
    followups = cfg.followups
    pool = [p for p in prompts if p["domain"] in domains and len(p["prompt"]) <= cfg.max_chars]
    for p in sorted(rng.sample(pool, min(cfg.conversations, len(pool))), key=prompts.index):
        options = list(followups.get(p["domain"], [])) + list(followups.get("any", []))
        if not options:
            raise MambaspecError(f"multiturn: no follow-up turns for domain '{p['domain']}' (followups: any: [...])")
        n = min(rng.randint(int(lo), int(hi)) - 1, len(options))
        p.update(first_domain=p["domain"], domain="multiturn", followups=rng.sample(options, n))


def followup_ids(tokenizer, text: str, eos: int) -> list[int]:
    """The tokens between the end of an answer (its EOS included) and the next answer: the next user turn, in the
    chat template when the tokenizer has one."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer("\n" + text + "\n", add_special_tokens=False)["input_ids"]
    mark = "\x00ANSWER\x00"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "question"}, {"role": "assistant", "content": mark},
         {"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    tail = rendered[rendered.index(mark) + len(mark):]
    end = tokenizer.decode([eos])
    return tokenizer(tail[len(end):] if tail.startswith(end) else tail, add_special_tokens=False)["input_ids"]


# -------------------------------------------------------------------------------------- answers

@dataclass
class AnswerBatch:
    index: int
    prompts: list[dict]  # each with "ids" (the chat-formatted prompt); multi-turn ones also "followup_ids"
    sampled: bool
    max_new: int | None = None  # None: the recipe's answers.max_new_tokens (a long-answer batch: long_answers)


def plan_batches(prompts: list[dict], recipe: DataRecipe, tokenizer) -> list[AnswerBatch]:
    """The fixed order in which prompts are answered: held-out first, then a seeded shuffle; batches of
    similar length (long prompts in smaller batches); every k-th batch sampled instead of greedy."""
    from ..core.engine import encode_prompt

    rng = random.Random(recipe.seed)
    held = [p for p in prompts if p["split"] == "heldout"]
    train = [p for p in prompts if p["split"] != "heldout"]
    rng.shuffle(train)
    for p in held + train:
        p["ids"] = encode_prompt(tokenizer, p["prompt"], chat=True)
        if p.get("followups"):
            p["followup_ids"] = [followup_ids(tokenizer, text, tokenizer.eos_token_id) for text in p["followups"]]
    size, long_size = recipe.answers.batch_size, recipe.answers.long_batch_size
    sampled_every = round(1 / recipe.answers.sampled_fraction) if recipe.answers.sampled_fraction else 0
    batches: list[AnswerBatch] = []
    for group in (held, train):
        short = [p for p in group if len(p["ids"]) < 1000]
        long = [p for p in group if len(p["ids"]) >= 1000]
        for rows, n in ((short, size), (long, long_size)):
            for start in range(0, len(rows), n * 8):  # sort within blocks: little padding, order still mixed
                block = sorted(rows[start:start + n * 8], key=lambda p: len(p["ids"]))
                for b in range(0, len(block), n):
                    k = len(batches)
                    sampled = group is train and sampled_every > 0 and k % sampled_every == sampled_every - 1
                    batches.append(AnswerBatch(k, block[b:b + n], sampled))
    # spread the long batches through the plan instead of leaving them to the end
    held_n = sum(1 for b in batches if b.prompts[0]["split"] == "heldout")
    rest = batches[held_n:]
    shorts = [b for b in rest if len(b.prompts[0]["ids"]) < 1000]
    longs = [b for b in rest if len(b.prompts[0]["ids"]) >= 1000]
    mixed, every = [], max(1, len(shorts) // max(1, len(longs)))
    for i, b in enumerate(shorts):
        mixed.append(b)
        if longs and (i + 1) % every == 0:
            mixed.append(longs.pop(0))
    ordered = batches[:held_n] + mixed + longs
    long_every = round(1 / recipe.long_answers.fraction) if recipe.long_answers.fraction else 0
    for i, b in enumerate(ordered):
        b.index = i
        if long_every and i >= held_n and i % long_every == long_every // 2 and len(b.prompts[0]["ids"]) < 1000:
            b.max_new = recipe.long_answers.max_new_tokens
    return ordered


def answer_batch(model, batch: AnswerBatch, pad: int, eos: int, max_new: int, top_k: int, recipe: DataRecipe,
                 ) -> list[dict]:
    """The target's answers to one batch of the plan (one shard), with the top-k log-probabilities at every answer
    token; the reference (CPU, float32) path. ``answer_batches`` answers several batches in one pass."""
    return answer_batches(model, [batch], pad, eos, max_new, top_k, recipe)[0]


@torch.inference_mode()
def answer_batches(model, batches: list[AnswerBatch], pad: int, eos: int, max_new: int, top_k: int,
                   recipe: DataRecipe, slack: float | None = None) -> list[list[dict]]:
    """The rows of several plan batches (one list per batch, as ``answer_batch`` makes each), decoded together in
    one batch (a GPU fills hundreds of rows). A multi-turn prompt (``followup_ids``) is answered turn by turn: its
    next user turn joins the batch's next pass once its answer ended; each turn's answer is a row of its own.
    ``slack``: the share of ended rows a batch carries before it is compacted (default: none on a CPU, the reference;
    an eighth on a GPU, where copying the cache of a thousand rows at every step would cost more than they do)."""
    if slack is None:
        slack = 0.0 if model.device.type == "cpu" else 0.125
    sampling = SamplingConfig(temperature=recipe.answers.temperature,
                              top_p=recipe.answers.top_p)
    gens = [torch.Generator().manual_seed(recipe.seed * 1_000_003 + b.index) if b.sampled else None for b in batches]
    active = [(g, i) for g, b in enumerate(batches) for i in range(len(b.prompts))]
    ids = {c: list(batches[c[0]].prompts[c[1]]["ids"]) for c in active}
    out: list[list[dict]] = [[] for _ in batches]
    turn = 0
    while active:
        limits = [batches[g].max_new or max_new for g, _ in active]
        answers, tops = _decode(model, [ids[c] for c in active], limits, [g for g, _ in active], gens, sampling,
                                pad, eos, top_k, slack)
        following = []
        for c, answer, top in zip(active, answers, tops):
            batch, p = batches[c[0]], batches[c[0]].prompts[c[1]]
            out[c[0]].append({"id": p["id"] if turn == 0 else f"{p['id']}/turn{turn + 1}", "domain": p["domain"],
                              "source": p["source"], "split": p["split"],
                              "mode": "sampled" if batch.sampled else "greedy", "prompt_len": len(ids[c]),
                              "ids": torch.tensor(ids[c] + answer, dtype=torch.int32),
                              "topk_ids": top[:, 0].to(torch.int32), "topk_logp": top[:, 1].to(torch.float16)})
            follow = p.get("followup_ids") or []
            if turn < len(follow) and answer[-1] == eos:  # an unfinished answer ends its conversation
                ids[c] = ids[c] + answer + list(follow[turn])
                following.append(c)
        active, turn = following, turn + 1
    return out


def _decode(model, prompts: list[list[int]], limits: list[int], groups: list[int], gens: list, sampling, pad: int,
            eos: int, top_k: int, slack: float) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Left-padded batched decoding with a KV cache that drops ended rows (and their cache) once more than ``slack``
    of the batch has ended (0: at once, the reference), so short answers do not pay for the longest one and a large
    batch does not copy its cache at every step. Row r draws greedily, or samples with ``gens[groups[r]]`` when that
    is a generator (the rows of one group draw together, as one batch alone would). Returns each row's answer and its
    (answer, 2, k) top-k ids and log-probabilities; one host sync per step."""
    width, device = max(len(x) for x in prompts), model.device
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts], device=device)
    tokens = torch.tensor([[pad] * (width - len(x)) + x for x in prompts], device=device)
    cache = new_kv_cache()  # room to grow: a step writes its token instead of copying the whole cache
    alive = list(range(len(prompts)))  # the prompt of each batch row
    live = [True] * len(prompts)  # batch rows still answering (an ended one stays until the batch is compacted)
    answers: list[list[int]] = [[] for _ in prompts]
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    where: list[list[int]] = [[] for _ in prompts]  # row of the concatenated steps holding each answer token's top-k
    seen = 0
    while True:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -tokens.shape[1]:]
        logits = model(input_ids=tokens, attention_mask=mask, position_ids=positions, **with_cache(model, cache),
                       use_cache=True, logits_to_keep=1).logits[:, -1].float()
        top = torch.log_softmax(logits, dim=-1).topk(top_k, dim=-1)
        steps.append((top.indices, top.values))
        nxt = logits.argmax(-1)
        for g, gen in enumerate(gens):
            rows = [r for r, orig in enumerate(alive) if live[r] and groups[orig] == g] if gen is not None else []
            if rows:
                index = torch.tensor(rows, device=device)
                nxt[index] = inverse_cdf_draw(warp(logits[index], sampling), gen)
        for row, (orig, tok) in enumerate(zip(alive, nxt.tolist())):
            if live[row]:
                answers[orig].append(tok)
                where[orig].append(seen + row)
                live[row] = tok != eos and len(answers[orig]) < limits[orig]
        seen += len(alive)
        keep = [row for row in range(len(alive)) if live[row]]
        if not keep:
            break
        if len(alive) - len(keep) > slack * len(alive):  # ended rows leave the batch and the cache
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, nxt = mask[index], nxt[index]
            alive, live = [alive[r] for r in keep], [True] * len(keep)
        tokens = nxt[:, None]
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
    top_ids = torch.cat([i for i, _ in steps]).cpu().float()
    top_logp = torch.cat([v for _, v in steps]).cpu()
    return answers, [torch.stack([top_ids[w], top_logp[w]], dim=1) for w in map(torch.tensor, where)]


def make_data(recipe: DataRecipe, load_target: Callable, log: Log = print, max_batches: int | None = None,
              pass_rows: int | None = None, deadline: float | None = None) -> Path:
    """Build (or finish building) the recipe's data set; returns its folder.

    ``load_target()`` returns a ``LoadedModel``; it is only called when something is left to make.
    ``max_batches`` stops after that many new shards (tests use it to simulate an interruption).
    ``pass_rows``: rows decoded together (several plan batches a pass; default ``$MAMBASPEC_GEN_ROWS``, else one
    batch on a CPU and 1536 rows on a GPU); the shards are the same either way. ``deadline`` (``time.time()``, default
    ``$MAMBASPEC_DATA_UNTIL``): stop starting passes then; the data set is the finished prefix until a rerun.
    """
    folder = recipe.folder
    restore_packs(recipe.packs, folder, recipe.settings_key(), log)
    plan_file = folder / "plan.json"
    budget = recipe.answers.batches
    deadline = deadline or float(os.environ.get("MAMBASPEC_DATA_UNTIL", 0)) or None
    if plan_file.exists():
        info = _plan_info(plan_file, recipe)
        if deadline is not None and time.time() >= deadline:
            return folder  # out of time: the shards made so far (plan.json counts them)
        n = info["batches"]
        wanted = budget or info.get("planned")  # no budget: the whole plan (its size unknown to old files: build it)
        if wanted is not None and wanted <= n and all(shard_path(folder, i).exists() for i in range(wanted)):
            if wanted < n:
                _write_json(plan_file, {**info, "batches": wanted})
            return folder
    (folder / "answers").mkdir(parents=True, exist_ok=True)
    log(f"data set {recipe.name}: loading the target {recipe.target} to make it ...")
    target = load_target()
    model, tokenizer = target.model, target.tokenizer
    prompts = build_prompt_set(recipe, model, tokenizer, log)
    plan = plan_batches(prompts, recipe, tokenizer)
    planned = len(plan)
    if budget:  # the recipe answers only the first batches of the plan (a CPU budget)
        plan = plan[:budget]
    _write_json(plan_file, {"batches": len(plan), "prompts": len(prompts), "planned": planned,
                            "settings": recipe.settings_key()})
    todo = [b for b in plan if not shard_path(folder, b.index).exists()]
    log(f"answers: {len(plan) - len(todo)} of {len(plan)} batches already done; {len(todo)} to go")
    if pass_rows is None:
        pass_rows = int(os.environ.get("MAMBASPEC_GEN_ROWS", 0)) or (1 if model.device.type == "cpu" else 1536)
    _answer_plan(model, tokenizer, recipe, todo[:max_batches] if max_batches is not None else todo, len(plan),
                 pass_rows, deadline, log)
    done = next((i for i in range(len(plan)) if not shard_path(folder, i).exists()), len(plan))
    # stopped by the deadline: the data set is the finished prefix of the plan, for now
    if done < len(plan) and deadline is not None and time.time() >= deadline:
        log(f"answers: time is up; {done} of {len(plan)} batches made (rerun to continue)")
        _write_json(plan_file, {**json.loads(plan_file.read_text()), "batches": done})
    return folder


def _windows(todo: list[AnswerBatch], rows: int) -> Iterator[list[AnswerBatch]]:
    """Consecutive plan batches, as many as make about ``rows`` rows of short prompts (and up to ``rows // 8`` of long
    ones, answered apart: one padded width for all would cost the short rows the long ones' cache); ``rows`` 1: one
    batch at a time, the reference path."""
    window: list[AnswerBatch] = []
    counts = [0, 0]  # rows of short and of long prompts in the window
    for batch in todo:
        kind = int(_is_long(batch))
        if window and counts[kind] + len(batch.prompts) > (rows // 8 if kind else rows):
            yield window
            window, counts = [], [0, 0]
        window.append(batch)
        counts[kind] += len(batch.prompts)
    if window:
        yield window


def _is_long(batch: AnswerBatch) -> bool:
    return len(batch.prompts[0]["ids"]) >= 1000  # the plan's long-prompt batches (smaller ones)


def _answer_plan(model, tokenizer, recipe: DataRecipe, todo: list[AnswerBatch], planned: int, pass_rows: int,
                 deadline: float | None, log: Log) -> None:
    """Answer ``todo``'s batches a window at a time (a pass for its short prompts, one for its long ones), a shard
    each, written in plan order, until done or ``deadline`` (``time.time()``). A window the GPU has no memory for
    is tried again at half the rows."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    max_new, top_k = recipe.answers.max_new_tokens, recipe.answers.top_k_logprobs
    t0, tokens, n = time.perf_counter(), 0, 0
    while n < len(todo):
        if deadline is not None and time.time() >= deadline:
            return
        window = next(_windows(todo[n:], pass_rows))
        try:
            made: dict[int, list[dict]] = {}
            for group in ([b for b in window if not _is_long(b)], [b for b in window if _is_long(b)]):
                if group:
                    shards = ([answer_batch(model, group[0], pad, eos, max_new, top_k, recipe)] if len(group) == 1
                              else answer_batches(model, group, pad, eos, max_new, top_k, recipe))
                    made.update({b.index: rows for b, rows in zip(group, shards)})
        except torch.cuda.OutOfMemoryError:
            if pass_rows <= 1:
                raise
            pass_rows //= 2
            torch.cuda.empty_cache()
            log(f"answers: out of GPU memory; {pass_rows} rows a window from now on")
            continue
        for batch in window:
            rows = made[batch.index]
            write_atomically(shard_path(recipe.folder, batch.index), lambda tmp: torch.save(rows, tmp))
            tokens += sum(len(r["ids"]) - r["prompt_len"] for r in rows)
            n += 1
        elapsed, left = time.perf_counter() - t0, len(todo) - n
        log(f"answers: batch {window[-1].index + 1}/{planned} ({n} this run), {tokens:,} answer tokens, "
            f"{tokens / elapsed:.0f} tok/s, {elapsed / 60:.1f} min"
            + (f"; {left} to go, ~{duration(elapsed / n * left)} at this run's pace" if left else ""))


def _plan_info(plan_file: Path, recipe: DataRecipe) -> dict:
    """``plan.json``, refused when the data set there was made with other settings than the recipe's now (its
    shards would be numbered or answered differently: a resume would mix them)."""
    info = json.loads(plan_file.read_text())
    made_with = info.get("settings")
    if made_with is None:  # written before settings were recorded: adopt the recipe's
        info["settings"] = recipe.settings_key()
        _write_json(plan_file, info)
    elif made_with != recipe.settings_key():
        raise MambaspecError(
            f"data set '{recipe.name}' in {plan_file.parent} was made with other settings than "
            f"recipes/data/{recipe.name}.yaml has now (only answers.batches may change between runs); restore the "
            f"recipe, or delete that folder to make the data set anew")
    return info


def _write_json(path: Path, obj) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(obj)))


def target_dtype(device: str) -> str:
    """The target's dtype for making data and training on ``device``: float32 on a CPU (the reference), bfloat16 on
    a GPU (the answers may differ where two tokens are nearly tied; the format is the same)."""
    return "float32" if device == "cpu" else "bfloat16"


def make_recipe_data(recipe, target: str, device: str = "cpu", log: Log = print) -> list[Path]:
    """Make every distillation data set a drafter recipe uses (``pretrain-drafter --data-only``)."""
    from ..loading.models import load_model
    from ..loading.options import ModelOptions

    loaded: list = []

    def load_target():
        if not loaded:
            loaded.append(load_model(target, ModelOptions(device=device, dtype=target_dtype(device))))
        return loaded[0]

    sets = [DataRecipe.of_source(src) for src in recipe.data if src["source"] == "distill"]
    if not sets:
        raise MambaspecError("the recipe uses no distillation data set (data: - source: distill, set: NAME)")
    return [make_data(data, load_target, log) for data in sets]


def read_shards(folder: Path, split: str | None = None) -> Iterator[dict]:
    """Every answered row of a data set (optionally of one split), in plan order (shards past the plan that
    ``plan.json`` records, e.g. from a run with a larger budget, are left out)."""
    folder = Path(folder)
    plan_file = folder / "plan.json"
    limit = json.loads(plan_file.read_text())["batches"] if plan_file.exists() else None
    for path in sorted((folder / "answers").glob("shard-*.pt")):
        if limit is not None and int(path.stem.split("-")[1]) >= limit:
            continue
        for row in torch.load(path, weights_only=False):
            if split is None or row["split"] == split:
                yield row
