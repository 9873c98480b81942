"""Bad input: a one-line message naming the problem, a non-zero exit, no traceback."""

import json
import subprocess
import sys

import pytest



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
    """Drafts through text by default (same output as plain decoding); refused with --cross-tokenizer off,
    and when sampling."""
    common = ["generate", "Hello  wörld", "--raw", "--target", tiny_dir["target"], "-n", "12"]
    plain = run_cli(*common, "--json", "--drafter", "none")
    cross = run_cli(*common, "--json", "--drafter", tiny_dir["other_tok"], "--tree", "2,2,1")
    assert plain.returncode == 0 and cross.returncode == 0, cross.stderr
    a, b = json.loads(plain.stdout), json.loads(cross.stdout)
    assert a["new_token_ids"] == b["new_token_ids"] and b["stats"]["drafter"].endswith("+xtok")
    assert_clean_error(run_cli(*common, "--drafter", tiny_dir["other_tok"], "--cross-tokenizer", "off"),
                       "different tokenizer")
    assert_clean_error(run_cli(*common, "--drafter", tiny_dir["other_tok"], "--temperature", "0.7"), "greedy only")


def test_missing_drafter_folder(tiny_dir):
    assert_clean_error(run_cli("generate", "hi", "--target", tiny_dir["target"], "--drafter", "./missing-drafter"),
                       "folder ./missing-drafter does not exist")


def test_unknown_target_without_drafter_is_one_line():
    """No 'no shipped drafter' hint before the real error."""
    assert_clean_error(run_cli("generate", "hi", "--target", "no-such-model"), "unknown model 'no-such-model'")


@pytest.mark.parametrize("args,needle", [
    (["--policy", "bogus"], "unknown policy 'bogus'"),
    (["--reward", "bogus"], "unknown reward 'bogus'"),
    (["--ucb-c", "-1"], "c (--ucb-c) must be >= 0"),
    (["--confidence-buckets", "0.9,0.5"], "invalid --confidence-buckets"),
    (["--arms", "missing.yaml"], "omit --arms"),
])
def test_tune_rejects_bad_options_before_loading_models(args, needle):
    assert_clean_error(run_cli("tune", "--target", "no-such-model", *args), needle)
