"""What concurrency does to `mambaspec serve`: the same requests sent by 1, 2, 4 ... clients at once.

Starts `mambaspec serve` on a free port (or uses --url), sends every held-out prompt of the chosen sets once per
concurrency level, streaming and greedy, and prints one row per level and drafter: aggregate tokens per second
(all completion tokens over the level's wall time), mean latency per request, mean time to the first token, and the
mean time requests waited in the queue (the server's own `speculation.queue_ms`).

    python scripts/serve_load.py                                   # smollm2-135m, 1,2,4 clients, --threads 1
    python scripts/serve_load.py --concurrency 1,2,4,8 --max-tokens 128 --drafters default,none
    python scripts/serve_load.py --url http://127.0.0.1:8000       # a server already running
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def prompts(sets: list[str], per_set: int) -> list[str]:
    out = []
    for name in sets:
        lines = (ROOT / "recipes" / "eval" / f"{name}.jsonl").read_text().splitlines()
        out += [json.loads(line)["prompt"] for line in lines if line.strip()][:per_set]
    return out


def start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mambaspec", "serve", "--target", args.target, "--port", str(port),
           "--threads", str(args.threads), "--max-queue", "1000", *args.serve_args]
    log = open(args.log, "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)  # its access log too
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server stopped: {Path(args.log).read_text()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            time.sleep(0.5)
    sys.exit("the server did not start within 10 minutes")


def one(base: str, model: str, prompt: str, max_tokens: int, drafter: str | None) -> dict:
    """One streamed chat request: tokens, latency, time to the first text, the server's speculation numbers."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if drafter:
        body["drafter"] = drafter
    start, first, usage, spec = time.perf_counter(), None, None, None
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=None) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - start
            if not chunk["choices"] and "usage" in chunk:
                usage, spec = chunk["usage"], chunk["speculation"]
    return {"latency": time.perf_counter() - start, "ttft": first or 0.0, "tokens": usage["completion_tokens"],
            "queue_ms": spec["queue_ms"], "accept": spec["mean_accept_length"]}


def level(base: str, model: str, texts: list[str], clients: int, max_tokens: int, drafter: str | None) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        rows = list(pool.map(lambda p: one(base, model, p, max_tokens, drafter), texts))
    wall = time.perf_counter() - start
    n = len(rows)
    return {"clients": clients, "drafter": drafter or "default", "requests": n,
            "tokens": sum(r["tokens"] for r in rows), "wall_s": wall,
            "tok_s": sum(r["tokens"] for r in rows) / wall, "latency_s": sum(r["latency"] for r in rows) / n,
            "ttft_s": sum(r["ttft"] for r in rows) / n, "queue_s": sum(r["queue_ms"] for r in rows) / n / 1e3,
            "accept": sum(r["accept"] for r in rows) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (default: start one)")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1, help="the started server's torch threads")
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--sets", default="code,math,chat,summaries", help="recipes/eval/*.jsonl sets")
    ap.add_argument("--per-set", type=int, default=2, help="prompts from each set")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--log", default="serve_load.log", help="the started server's output")
    ap.add_argument("--drafters", default="default,none",
                    help="per-request drafters: default (the server's), none, lookup")
    ap.add_argument("serve_args", nargs="*", help="after --: more `mambaspec serve` options")
    args = ap.parse_args()
    server, base = (None, args.url.rstrip("/")) if args.url else start_server(args)
    try:
        model = httpx.get(base + "/v1/models").json()["data"][0]["id"]
        texts = prompts(args.sets.split(","), args.per_set)
        one(base, model, texts[0], 8, None)  # warm-up: first-call costs out of the numbers
        print(f"{len(texts)} requests per level, {args.max_tokens} tokens max, greedy, streamed; {os.cpu_count()} "
              f"CPU cores; server threads {args.threads if not args.url else '?'}")
        print("| clients | drafter | tokens | wall s | aggregate tok/s | mean latency s | mean first token s "
              "| mean queue wait s | accept length |")
        print("|---|---|---|---|---|---|---|---|---|")
        for drafter in args.drafters.split(","):
            for clients in map(int, args.concurrency.split(",")):
                r = level(base, model, texts, clients, args.max_tokens, None if drafter == "default" else drafter)
                print(f"| {r['clients']} | {r['drafter']} | {r['tokens']} | {r['wall_s']:.1f} | {r['tok_s']:.1f} | "
                      f"{r['latency_s']:.2f} | {r['ttft_s']:.2f} | {r['queue_s']:.2f} | {r['accept']:.2f} |",
                      flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
