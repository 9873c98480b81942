"""Bad input: a one-line message naming the problem, a non-zero exit, no traceback."""

import json
import subprocess
import sys

import pytest

from mambaspec.models import load_model


def run_cli(*args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "mambaspec.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    return proc


def assert_clean_error(proc, *needles):
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--target", "no-such-model"], ["unknown model", "no-such-model"]),
    (["--target", "/nonexistent/model.gguf"], ["not found"]),
    (["--tree", "0,2"], ["invalid tree shape"]),
    (["--tree", "a,b"], ["invalid tree shape"]),
    (["--tree", ","], ["invalid tree shape"]),
    (["--temperature", "-1"], ["temperature"]),
    (["--top-p", "0"], ["top-p"]),
    (["--max-new-tokens", "0"], ["max-new-tokens"]),
])
def test_bad_options(tiny_dir, args, needles):
    full = ["generate", "hello", "--target", tiny_dir["target"], "--drafter", "none", *args]
    assert_clean_error(run_cli(*full), *needles)


def test_empty_prompt(tiny_dir):
    assert_clean_error(run_cli("generate", "  ", "--target", tiny_dir["target"]), "empty")


def test_prompt_longer_than_context(tiny_dir):
    assert_clean_error(run_cli("generate", "x" * 600, "--raw", "--target", tiny_dir["target"], "--drafter", "none"),
                       "context", "shorten")


def test_drafter_with_other_tokenizer(tiny_dir):
    proc = run_cli("generate", "hello", "--target", tiny_dir["target"], "--drafter", tiny_dir["other_tok"])
    assert_clean_error(proc, "different tokenizer")


def test_missing_drafter_folder(tiny_dir):
    assert_clean_error(run_cli("generate", "hi", "--target", tiny_dir["target"], "--drafter", "./missing-drafter"),
                       "unknown model")


def test_not_yet_implemented_commands():
    for cmd in ("bench", "tune", "pretrain-drafter"):
        proc = run_cli(cmd, "humaneval")
        assert proc.returncode == 2 and "not implemented" in proc.stderr


@pytest.mark.parametrize("drafter", ["mamba2", "mamba", "llama"])
def test_generate_json_matches_plain(tiny_dir, drafter):
    common = ["generate", "Hello world", "--raw", "--target", tiny_dir["target"], "-n", "20", "--json"]
    plain = run_cli(*common, "--drafter", "none")
    spec = run_cli(*common, "--drafter", tiny_dir[drafter], "--tree", "3,2,2,1,1")
    assert plain.returncode == 0 and spec.returncode == 0, spec.stderr
    a, b = json.loads(plain.stdout), json.loads(spec.stdout)
    assert a["new_token_ids"] == b["new_token_ids"] and len(b["new_token_ids"]) == 20
    for key in ("new_tokens", "seconds", "prefill_s", "tokens_per_s", "rounds", "mean_accept_len",
                "draft_s", "verify_s", "peak_mem_mb", "tree"):
        assert key in b["stats"]
    assert b["stats"]["tree"] == "(3,2,2,1,1)" and b["stats"]["drafter_state_bytes"] > 0


def test_streamed_text_then_table(tiny_dir):
    proc = run_cli("generate", "Hello", "--raw", "--target", tiny_dir["target"], "--drafter", tiny_dir["mamba2"],
                   "-n", "10")
    assert proc.returncode == 0, proc.stderr
    assert "mean_accept_len" in proc.stdout and "generation stats" in proc.stdout


def test_models_lists_known_names():
    proc = run_cli("models")
    assert proc.returncode == 0
    for name in ("smollm2-135m", "gemma3-270m", "mistral-7b", "mamba-130m"):
        assert name in proc.stdout


def test_load_model_from_folder(tiny_dir):
    loaded = load_model(tiny_dir["mamba2"], device="cpu")
    assert loaded.model.config.model_type == "mamba2" and loaded.tokenizer is not None
