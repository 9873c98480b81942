"""The bench's record: ``results.csv`` (one row per dataset, length and method, with the configuration in
every row), ``outputs.jsonl`` (every prompt's new tokens and text), read back through pandas."""

from __future__ import annotations

import csv
import json
import subprocess
import threading
from pathlib import Path

import pandas as pd
import torch

from .. import __version__
from ..config import PACKAGE_DIR, write_atomically
from ..errors import MambaspecError
from ..loading.costs import device_name

CSV_NAME = "results.csv"
OUTPUTS_NAME = "outputs.jsonl"
CONFIG_COLUMNS = ["target", "drafter", "transformer_drafter", "eagle_drafter", "tree", "arms", "ucb_c",
                  "confidence_buckets", "max_new_tokens", "temperature", "limit", "data", "device", "dtype",
                  "linear", "quantize", "compile", "target_options", "seed", "prompt_lookup_tokens", "lookup_global"]
COLUMNS = [
    "config_id", "dataset", "length", "method",
    "prompts", "prompt_tokens", "new_tokens", "decode_tokens_per_s", "tokens_per_s", "speedup_decode",
    "speedup_e2e", "mean_accept_len", "rounds", "mean_tree_nodes", "no_draft_rounds", "drafted_accept_len",
    "predicted_accept_len", "prediction_error", "draft_ms_per_round", "verify_ms_per_round", "prefill_s", "seconds",
    "peak_mem_mb", "mem_measure", "drafter_state_bytes", "target_kv_bytes", "greedy_match", "mismatched_prompts",
    "reference_match", "reference_margin",
    "method_detail",
    *CONFIG_COLUMNS, "device_name", "threads", "torch", "transformers", "mambaspec", "git_commit", "date",
]
TEXT = sorted(set(COLUMNS) - {"length", "prompts", "prompt_tokens", "new_tokens", "decode_tokens_per_s",
                              "tokens_per_s", "speedup_decode", "speedup_e2e", "mean_accept_len", "rounds",
                              "mean_tree_nodes", "no_draft_rounds", "drafted_accept_len", "predicted_accept_len",
                              "prediction_error", "draft_ms_per_round", "verify_ms_per_round",
                              "prefill_s", "seconds", "peak_mem_mb", "drafter_state_bytes",
                              "target_kv_bytes", "mismatched_prompts"})


def drop_torn_line(path: Path) -> None:
    """Cut a last line without its newline (a write killed half-way: that row or record never finished, and it
    would break every later read of the file)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def read_results(path: Path) -> pd.DataFrame:
    """A results CSV as a DataFrame (numbers as floats, empty cells as NaN; text columns as text)."""
    drop_torn_line(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=COLUMNS)
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    if header != COLUMNS:
        raise MambaspecError(f"{path} was written with other columns (another mambaspec version); pass another "
                             f"output folder")
    return pd.read_csv(path, dtype={c: str for c in TEXT}, keep_default_na=False, na_values={
        c: [""] for c in COLUMNS if c not in TEXT})


def rows_of(frame: pd.DataFrame) -> list[dict]:
    """DataFrame rows as dicts, NaN as None."""
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in frame.to_dict("records")]


def append_row(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})


def append_outputs(path: Path, where: dict, method: str, records: list[dict]) -> None:
    """Add a method's records, replacing any it left before (a run stopped between its outputs and its CSV row)."""
    key = {**where, "method": method}
    drop_torn_line(path)
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        kept = [ln for ln in lines if not all(json.loads(ln).get(k) == v for k, v in key.items())]
        if len(kept) < len(lines):
            write_atomically(path, lambda tmp: tmp.write_text("".join(kept)))
    with path.open("a") as f:
        for r in records:
            f.write(json.dumps({**key, **r}) + "\n")


def read_outputs(path: Path, where: dict) -> dict[str, list[int]]:
    """Prompt id -> new token ids of the outputs.jsonl records matching ``where`` (the last one wins)."""
    drop_torn_line(path)
    if not path.exists():
        return {}
    found = {}
    with path.open() as f:
        for line in f:
            r = json.loads(line)
            if all(r.get(k) == v for k, v in where.items()):
                found[r["prompt_id"]] = r["new_token_ids"]
    return found


def environment(device: torch.device) -> dict:
    """Where the numbers were measured: device name, threads, versions, git commit."""
    import transformers

    return {"device_name": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "mambaspec": __version__, "git_commit": git_commit()}


def git_commit() -> str:
    """The source checkout's commit (``+dirty`` with uncommitted changes); empty outside a checkout."""
    try:
        head = subprocess.run(["git", "-C", str(PACKAGE_DIR), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode:
            return ""
        dirty = subprocess.run(["git", "-C", str(PACKAGE_DIR), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


class PeakMemory:
    """Peak memory over a block: CUDA ``max_memory_allocated``, or on CPU the process's resident set
    sampled every ``interval`` seconds by a background thread (psutil)."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device = device
        self.interval = interval
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss_sampled"
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        proc = psutil.Process()
        self.peak_bytes = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)

        self._stop.clear()
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        import psutil

        self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)
