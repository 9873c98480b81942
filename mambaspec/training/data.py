"""Training data for a drafter: token streams per source, and the batch of every step.

Sources (a recipe's ``data`` list):
- ``stdlib-code``: the Python standard library's source, as language-model text;
- ``files``: local text (.txt/.md/.py/.rst, .jsonl with a text/prompt/completion field, .parquet);
  Either takes ``labels: target`` (with ``tokens: N``, default 300,000): then the drafter learns, on a
  sample of N tokens of it, the target's own argmax after every token instead of the text's next token
  (``relabel``); ``tokens: N`` alone trains on the same sample with the text's own next tokens.
- ``distill``: a distillation data set (``recipes/data/NAME.yaml``, made by ``datagen``): the
  target's answers to prompts, with its top-k log-probabilities at every answer token (soft
  targets) and a mark on answer tokens (prompt tokens can weigh less). Its ``heldout`` split is
  kept for evaluation, never trained on.

The batch of step ``s`` depends only on ``(seed, s)``, so a resumed run replays the same order.
Windows of a distillation source start where one of its rows starts (the context of an answer,
e.g. a long document, comes first); other sources are cut anywhere.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import cache_dir, write_atomically
from ..errors import MambaspecError
from .recipe import DrafterRecipe

Log = Callable[[str], None]
DEFAULT_LABEL_TOKENS = 300_000  # tokens of a text source the target labels (``labels: target``) unless it says


@dataclass
class Stream:
    """One source as one long sequence of target token ids, with optional per-token extras."""

    name: str
    weight: float
    ids: torch.Tensor  # (N,) int32
    answer: torch.Tensor | None = None  # (N,) bool: an answer token (distillation)
    soft_ids: torch.Tensor | None = None  # (N, K) int32: the target's top-k at the position predicting token i
    soft_logp: torch.Tensor | None = None  # (N, K) float16: their log-probabilities (-inf: unknown)
    starts: torch.Tensor | None = None  # row starts (distillation): windows begin at one of these
    labels: torch.Tensor | None = None  # (N,) int32: the target's argmax after token i (target-labelled text)


@dataclass
class Batch:
    ids: torch.Tensor  # (B, L + 1) target ids
    weight: torch.Tensor  # (B, L) loss weight of each predicted token
    soft_ids: torch.Tensor | None = None  # (B, L, K)
    soft_logp: torch.Tensor | None = None  # (B, L, K), -inf where no soft target
    labels: torch.Tensor | None = None  # (B, L) what each position learns to predict, when not ids[:, 1:]


@dataclass
class TrainingData:
    streams: list[Stream]
    heldout: list[dict] = field(default_factory=list)  # distillation rows kept out of training

    def batch(self, step: int, recipe: DrafterRecipe) -> Batch:
        """The batch of ``step``: a pure function of (seed, step), so resuming replays the same order."""
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        length, size = recipe.seq_len_at(step), recipe.batch_at(step)
        probs = torch.tensor([s.weight for s in self.streams]) / sum(s.weight for s in self.streams)
        which = torch.multinomial(probs, size, replacement=True, generator=g).tolist()
        soft = any(s.soft_ids is not None for s in self.streams) and recipe.kd_weight > 0
        relabelled = any(s.labels is not None for s in self.streams)
        ids, weights, s_ids, s_logp, labels = [], [], [], [], []
        for k in which:
            s = self.streams[k]
            limit = max(1, len(s.ids) - length - 1)
            if s.starts is not None:
                ok = s.starts[s.starts < limit]
                start = int(ok[torch.randint(0, len(ok), (1,), generator=g)]) if len(ok) else 0
            else:
                start = int(torch.randint(0, limit, (1,), generator=g))
            end = start + length + 1
            ids.append(_fit(s.ids[start:end].long(), length + 1, 0))
            w = torch.ones(length)
            if s.answer is not None:
                w = torch.where(_fit(s.answer[start + 1:end], length, False), 1.0, recipe.prompt_weight)
            weights.append(w)
            if relabelled:
                own = s.labels[start:end - 1] if s.labels is not None else s.ids[start + 1:end]
                labels.append(_fit(own.long(), length, 0))
            if soft:
                k_top = next(x.soft_ids.shape[1] for x in self.streams if x.soft_ids is not None)
                if s.soft_ids is None:
                    s_ids.append(torch.zeros(length, k_top, dtype=torch.long))
                    s_logp.append(torch.full((length, k_top), float("-inf")))
                else:
                    s_ids.append(_fit(s.soft_ids[start + 1:end].long(), length, 0))
                    s_logp.append(_fit(s.soft_logp[start + 1:end].float(), length, float("-inf")))
        batch = Batch(torch.stack(ids), torch.stack(weights))
        if soft:
            batch.soft_ids, batch.soft_logp = torch.stack(s_ids), torch.stack(s_logp)
        if relabelled:
            batch.labels = torch.stack(labels)
        return batch


def _fit(t: torch.Tensor, n: int, fill) -> torch.Tensor:
    """``t`` cut or padded (with ``fill``) to ``n`` rows."""
    if len(t) >= n:
        return t[:n]
    pad = torch.full((n - len(t), *t.shape[1:]), fill, dtype=t.dtype)
    return torch.cat([t, pad])


def tokenize_texts(tokenizer, texts: list[str]) -> torch.Tensor:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for start in range(0, len(texts), 64):
        for row in tokenizer(texts[start:start + 64])["input_ids"]:
            ids.extend(row)
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.int32)


def read_text_files(paths: list[str]) -> list[str]:
    """Text from .txt/.md/.py/.rst files, .jsonl (a text/prompt/completion field) and .parquet, or folders of them."""
    texts: list[str] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise MambaspecError(f"training data {p}: no such file or folder")
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            texts.extend(_texts_of(f))
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        where = " ".join(map(str, paths)) or "(no paths given: a `files` source lists them under `paths:`)"
        raise MambaspecError(f"training data {where}: no text found (.txt/.md/.py/.rst/.jsonl/.parquet)")
    return texts


def _texts_of(f: Path) -> list[str]:
    try:
        if f.suffix in (".txt", ".md", ".py", ".rst"):
            return [f.read_text(errors="ignore")]
        if f.suffix == ".jsonl":
            out = []
            for i, line in enumerate(f.read_text().splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    out.append(row.get("text") or (row.get("prompt", "") + row.get("completion", "")))
            return out
        if f.suffix == ".parquet":
            import pandas as pd

            df = pd.read_parquet(f)
            col = "text" if "text" in df.columns else df.columns[0]
            return df[col].astype(str).tolist()
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise MambaspecError(f"training data {f}: cannot read it ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return []


def stdlib_stream(target_name: str, tokenizer, log: Log) -> torch.Tensor:
    from .corpus import stdlib_code

    # keyed by the tokenizer's size and the Python version too: another tokenizer or standard library is other data
    key = f"{Path(target_name).name}-{len(tokenizer)}-py{sys.version_info[0]}.{sys.version_info[1]}"
    cache = cache_dir() / "tokens" / f"{key}-stdlib-code.pt"
    if cache.exists():
        return torch.load(cache)
    log("tokenizing the standard library's source ...")
    ids = tokenize_texts(tokenizer, stdlib_code())
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cache, lambda tmp: torch.save(ids, tmp))
    return ids


def distill_stream(name: str, weight: float, rows: list[dict]) -> Stream:
    """Rows of a distillation set concatenated: ids, answer marks, soft targets aligned to the tokens they predict."""
    ids, answer, s_ids, s_logp, starts = [], [], [], [], []
    pos = 0
    k = next((r["topk_ids"].shape[1] for r in rows if "topk_ids" in r), 1)  # rows from a pack have none
    for r in rows:
        n, p = len(r["ids"]), r["prompt_len"]
        starts.append(pos)
        ids.append(r["ids"])
        mark = torch.zeros(n, dtype=torch.bool)
        mark[p:] = True
        answer.append(mark)
        si = torch.zeros(n, k, dtype=torch.int32)
        sl = torch.full((n, k), float("-inf"), dtype=torch.float16)  # -inf: no soft target (the KL leaves it out)
        if "topk_ids" in r:
            m = min(len(r["topk_ids"]), n - p)  # answer token p + j was predicted by the target's step j
            si[p:p + m], sl[p:p + m] = r["topk_ids"][:m], r["topk_logp"][:m]
        s_ids.append(si)
        s_logp.append(sl)
        pos += n
    return Stream(name, weight, torch.cat(ids).to(torch.int32), torch.cat(answer), torch.cat(s_ids),
                  torch.cat(s_logp), torch.tensor(starts))


def prepare_data(recipe: DrafterRecipe, target_name: str, tokenizer, get_target: Callable, extra: list[str],
                 log: Log) -> TrainingData:
    """Every source of the recipe as a stream (distillation sets are made first when missing)."""
    from .data_recipe import DataRecipe
    from .datagen import make_data, read_shards

    sources = list(recipe.data) + ([{"source": "files", "paths": extra, "weight": 1.0}] if extra else [])
    data = TrainingData([])
    for src in sources:
        kind, weight = src["source"], float(src.get("weight", 1.0))
        if kind in ("stdlib-code", "files"):
            ids = (stdlib_stream(target_name, tokenizer, log) if kind == "stdlib-code"
                   else tokenize_texts(tokenizer, read_text_files(src.get("paths", []))))
            stream = Stream(kind, weight, ids)
            if src.get("labels", "real") == "target":
                from ..loading.models import weights_id
                from .relabel import target_labelled

                model = get_target().model
                key = f"{weights_id(target_name)}-{str(model.dtype).removeprefix('torch.')}"  # bf16 labels differ
                ids, labels = target_labelled(ids, int(src.get("tokens", DEFAULT_LABEL_TOKENS)), model, key,
                                              recipe.seed, log)
                stream = Stream(f"{kind}:target-labels", weight, ids, labels=labels)
            elif "tokens" in src:  # the same sample of windows as labels: target takes, with the text's own labels
                from .relabel import sample

                stream = Stream(f"{kind}:sample", weight, sample(ids, int(src["tokens"]), recipe.seed))
        else:
            data_recipe = DataRecipe.of_source(src)
            if Path(data_recipe.target).name != Path(target_name).name and not src.get("any_target"):
                raise MambaspecError(f"data set '{data_recipe.name}' holds answers of {data_recipe.target}, not of "
                                     f"{target_name}; make a data recipe for this target")
            folder = make_data(data_recipe, get_target, log)
            rows = list(read_shards(folder))
            data.heldout += [r for r in rows if r["split"] == "heldout"]
            stream = distill_stream(f"distill:{data_recipe.name}", weight, [r for r in rows if r["split"] == "train"])
        if len(stream.ids) < recipe.seq_len + 2:
            raise MambaspecError(f"data source '{kind}' has only {len(stream.ids)} tokens; give more text")
        data.streams.append(stream)
        log(f"data source {stream.name}: {len(stream.ids):,} tokens, weight {weight}")
    return data
