"""The command line: text on stdout and everything else on stderr, prompts from files and stdin, stop strings,
reproducible JSON records, and bad input refused in one line (before the heavy imports)."""

import json
import time

import pytest

from conftest import run_cli, run_cli_process


def assert_clean_error(res, *needles):
    """A non-zero exit and one error line (the last; status lines such as "loading ..." may come before it)."""
    assert res.exit_code != 0, res.stdout
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle.lower() in errors[0].lower(), errors[0]


@pytest.fixture(scope="module")
def gen_args(tiny_dir):
    return ["generate", "--raw", "--target", tiny_dir["target"], "--drafter", tiny_dir["mamba2"], "-n", "12"]


@pytest.mark.parametrize("args,needles", [
    (["--target", "no-such-model"], ["unknown model", "no-such-model"]),
    (["--target", "/nonexistent/model.gguf"], ["not found"]),
    (["--tree", "0,2"], ["--tree", "invalid tree shape"]),
    (["--tree", "a,b"], ["invalid tree shape"]),
    (["--tree", ","], ["invalid tree shape"]),
    (["--tree", "0"], ["--tree", "--drafter none"]),
    (["--temperature", "-1"], ["temperature"]),
    (["--top-p", "0"], ["top-p"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["--linear", "mkl"], ["unknown linear backend", "--linear"]),
    (["--cross-tokenizer", "sometimes"], ["--cross-tokenizer"]),
    (["--stop", ""], ["--stop"]),
    (["--drafter", "no-such-drafter"], ["--drafter", "unknown model", "no-such-drafter"]),
    (["--arms", "arms.yaml"], ["--arms", "--tree auto"]),
    (["--threads", "0"], ["--threads"]),
])
def test_bad_options(tiny_dir, args, needles):
    assert_clean_error(run_cli("generate", "hello", "--target", tiny_dir["target"], "--drafter", "none", *args),
                       *needles)


def test_empty_prompt_and_no_prompt(tiny_dir):
    assert_clean_error(run_cli("generate", "  ", "--target", tiny_dir["target"]), "empty")
    assert_clean_error(run_cli("generate", "--target", tiny_dir["target"]), "--prompt-file")
    assert_clean_error(run_cli("generate", "--prompt-file", "/nonexistent/p.txt"), "/nonexistent/p.txt")


def test_prompt_longer_than_context(tiny_dir):
    assert_clean_error(run_cli("generate", "x" * 600, "--raw", "--target", tiny_dir["target"], "--drafter", "none"),
                       "context", "shorten")


def test_stdout_holds_only_the_text(gen_args):
    res = run_cli(*gen_args, "Hello")
    assert res.exit_code == 0, res.stderr
    plain = run_cli(*gen_args, "Hello", "--json")
    text = json.loads(plain.stdout)["text"]
    assert res.stdout == text + "\n"  # the text and a final newline, nothing else
    assert "generation stats" in res.stderr and "mean_accept_len" in res.stderr and "loading" in res.stderr
    quiet = run_cli(*gen_args, "Hello", "--quiet")
    assert quiet.stdout == res.stdout and quiet.stderr == ""


def test_prompt_file_and_stdin(gen_args, tmp_path):
    ref = json.loads(run_cli(*gen_args, "def f(x):\n", "--json").stdout)
    path = tmp_path / "prompt.txt"
    path.write_text("def f(x):\n")
    from_file = json.loads(run_cli(*gen_args, "--prompt-file", path, "--json").stdout)
    from_stdin = json.loads(run_cli(*gen_args, "--prompt-file", "-", "--json", input="def f(x):\n").stdout)
    assert ref["new_token_ids"] == from_file["new_token_ids"] == from_stdin["new_token_ids"]
    assert_clean_error(run_cli(*gen_args, "hi", "--prompt-file", path), "not both")


def test_stop_strings_only_cut(gen_args):
    full = json.loads(run_cli(*gen_args, "Hello", "-n", "30", "--json").stdout)
    text = full["text"]
    stop = text[8:10]  # a string that occurs in the greedy output
    first = text.index(stop)
    cut = json.loads(run_cli(*gen_args, "Hello", "-n", "30", "--stop", stop, "--json").stdout)
    assert cut["text"] == text[:first] and cut["stats"]["stopped"] == "stop"
    assert cut["new_token_ids"] == full["new_token_ids"][: len(cut["new_token_ids"])]  # a prefix: only cut
    streamed = run_cli(*gen_args, "Hello", "-n", "30", "--stop", stop, "--stop", "never-there", "--quiet")
    assert streamed.stdout == text[:first] + "\n"


def test_stop_string_that_never_comes_changes_nothing(gen_args):
    full = json.loads(run_cli(*gen_args, "Hello", "-n", "30", "--json").stdout)
    res = run_cli(*gen_args, "Hello", "-n", "30", "--stop", "never-there", "--json")
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)
    assert rec["text"] == full["text"] and rec["stats"]["stopped"] == full["stats"]["stopped"]
    streamed = run_cli(*gen_args, "Hello", "-n", "30", "--stop", "never-there", "--quiet")
    assert streamed.exit_code == 0 and streamed.stdout == full["text"] + "\n", streamed.stderr


def test_stop_escapes():
    from mambaspec.cli import _unescape

    assert _unescape(r"\n\n") == "\n\n" and _unescape(r"a\tb") == "a\tb" and _unescape(r"\\n") == "\\n"
    assert _unescape("plain") == "plain"


def test_json_record_reproduces_itself(gen_args):
    rec = json.loads(run_cli(*gen_args, "Hello", "--temperature", "0.7", "--top-p", "0.9", "--seed", "3",
                             "--json").stdout)
    assert rec["target"] == gen_args[3] and rec["tree"] == "dynamic" and rec["max_new_tokens"] == 12
    assert rec["sampling"] == {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 3}
    # a seed fixes the text (with any tree and drafter too: test_sampling.test_cli_seed_fixes_the_text)
    fixed = [*gen_args, "Hello", "--temperature", "0.7", "--top-p", "0.9", "--seed", "3", "--tree", "2,1,1", "--json"]
    rec, again = (json.loads(run_cli(*fixed).stdout) for _ in range(2))
    assert again["new_token_ids"] == rec["new_token_ids"]


def test_system_turn(tiny_dir):
    from tiny import char_tokenizer

    tok = char_tokenizer()
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    folder = tiny_dir["target"] + "-chat"
    import shutil

    shutil.copytree(tiny_dir["target"], folder, dirs_exist_ok=True)
    tok.save_pretrained(folder)
    args = ["generate", "Hi", "--target", folder, "--drafter", "none", "-n", "4", "--json"]
    with_system = json.loads(run_cli(*args, "--system", "Be brief.").stdout)
    without = json.loads(run_cli(*args).stdout)
    assert with_system["prompt_tokens"] == without["prompt_tokens"] + len("[system] Be brief.\n")
    assert_clean_error(run_cli(*args, "--raw", "--system", "Be brief."), "chat template")


def test_drafter_with_other_tokenizer(tiny_dir):
    """Drafts through text by default (same output as plain decoding); refused with --cross-tokenizer off,
    and when sampling."""
    common = ["generate", "Hello  wörld", "--raw", "--target", tiny_dir["target"], "-n", "12"]
    plain = run_cli(*common, "--json", "--drafter", "none")
    cross = run_cli(*common, "--json", "--drafter", tiny_dir["other_tok"], "--tree", "2,2,1")
    assert plain.exit_code == 0 and cross.exit_code == 0, cross.stderr
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


def test_an_offline_model_package_without_its_parts_is_one_line(tmp_path, monkeypatch):
    """A GGUF shipped in parts (gemma3-270m) installed with --no-deps: the fix is named, no traceback."""
    from mambaspec.errors import MambaspecError
    from mambaspec.loading.models import ModelEntry, _offline_gguf

    (tmp_path / "parted_gguf").mkdir()
    (tmp_path / "parted_gguf" / "__init__.py").write_text(
        "def assemble(out, overwrite=False):\n    open(out, 'wb').write(b'half')\n"
        "    import parted_gguf_part1  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MAMBASPEC_CACHE", str(tmp_path / "cache"))
    entry = ModelEntry("parted", offline={"package": "parted-gguf", "module": "parted_gguf", "assemble": True,
                                          "gguf_file": "x.gguf"})
    with pytest.raises(MambaspecError, match="pip install --force-reinstall parted-gguf"):
        _offline_gguf(entry)
    assert not list((tmp_path / "cache").rglob("*.gguf*"))  # nothing half-made is taken for the file next time


@pytest.mark.parametrize("args,needle", [
    (["--policy", "bogus"], "unknown policy 'bogus'"),
    (["--reward", "bogus"], "unknown reward 'bogus'"),
    (["--ucb-c", "-1"], "c must be >= 0"),
    (["--confidence-buckets", "0.9,0.5"], "invalid confidence buckets"),
    (["--arms", "missing.yaml"], "arms file not found"),
    (["--limit", "0"], "--limit"),
])
def test_tune_rejects_bad_options_before_loading_models(args, needle):
    # a hub id passes the name check and would only fail when loading: every option is checked before that
    assert_clean_error(run_cli("tune", "--target", "no-such-org/no-such-model", *args), needle)


# ------------------------------------------------------------------------------ real processes

def test_bad_options_are_refused_before_torch_is_imported(tmp_path):
    """A `torch` that cannot be imported: the option error still comes, so it came first (and fast)."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    for args, needle in ((["generate", "hi", "--tree", "1,x"], "invalid tree shape"),
                         (["generate", "hi", "-n", "0"], "--max-new-tokens"),
                         (["generate", "hi", "--top-p", "1.5"], "top-p"),
                         (["bench", "humaneval", "--lengths", "1x"], "--lengths"),
                         (["tune", "--policy", "nope"], "unknown policy"),
                         (["generate", "hi", "--target", "no-such-model"], "--target: unknown model"),
                         (["generate", "hi", "--drafter", "no-such-drafter+lookup"], "--drafter: unknown model"),
                         (["verify-cost", "--target", "./no/such/folder"], "does not exist")):
        t0 = time.perf_counter()
        proc = run_cli_process(*args, env={"PYTHONPATH": str(tmp_path)})
        assert proc.returncode != 0 and needle in proc.stderr, proc.stderr
        assert "torch was imported" not in proc.stderr and "Traceback" not in proc.stderr
        assert time.perf_counter() - t0 < 5


def test_generate_to_a_file_and_interrupted_start_up(tiny_dir, tmp_path):
    out = tmp_path / "out.txt"
    with out.open("w") as f:
        proc = run_cli_process("generate", "Hello", "--raw", "--target", tiny_dir["target"], "--drafter",
                               tiny_dir["mamba2"], "-n", "8", stdout=f)
    assert proc.returncode == 0, proc.stderr
    assert "generation stats" in proc.stderr and "generation stats" not in out.read_text()
    import signal
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "mambaspec", "generate", "hi", "--target", tiny_dir["target"]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_torch(p)  # well into mambaspec's start-up (the libraries are loading), however loaded the machine
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err and "interrupted" in err, err


def _wait_for_torch(proc, timeout: float = 60.0) -> None:
    """Until ``proc`` has mapped libtorch (on Linux; elsewhere two seconds)."""
    maps, deadline = f"/proc/{proc.pid}/maps", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with open(maps) as f:
                if "libtorch" in f.read():
                    return
        except OSError:
            time.sleep(2.0)
            return
        time.sleep(0.02)


def test_help_piped_keeps_option_names_whole():
    proc = run_cli_process("bench", "--help", env={"COLUMNS": None})
    assert "--prompt-lookup-tokens" in proc.stdout and "…" not in proc.stdout


@pytest.mark.parametrize("drafter,tree", [("mamba2", "dynamic"), ("lookup", "2,1,1"), ("lookup", "dynamic"),
                                          ("mamba2+lookup", "2,1,1"), ("mamba2+lookup", "dynamic")])
def test_dynamic_trees_and_lookup_drafters_from_the_cli(tiny_dir, drafter, tree):
    name = drafter.replace("mamba2", tiny_dir["mamba2"])
    common = ["generate", "ab ab ab ab ab", "--raw", "--target", tiny_dir["target"], "-n", "16", "--json"]
    plain = json.loads(run_cli(*common, "--drafter", "none").stdout)
    res = run_cli(*common, "--drafter", name, "--tree", tree)
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)
    assert rec["new_token_ids"] == plain["new_token_ids"] and rec["stats"]["drafter"].endswith(drafter.split("2")[-1])
    if tree == "dynamic":
        assert rec["stats"]["tree"] == "dynamic" and "predicted_accept_len" in rec["stats"]["policy_report"]


# ------------------------------------------------------------------- issue 28: messages, labels, early checks

@pytest.mark.parametrize("args,flag", [
    (["--temperature", "-1"], "--temperature"), (["--top-p", "0"], "--top-p"), (["--top-k", "-2"], "--top-k"),
    (["--dtype", "f8"], "--dtype"), (["--device", "tpu"], "--device"), (["--quantize", "int4"], "--quantize"),
    (["--tree", "auto", "--ucb-c", "-1"], "--ucb-c"), (["--tree", "auto", "--reward", "x"], "--reward"),
    (["--threads", "0"], "--threads"),
])
def test_a_bad_value_names_its_own_flag(tiny_dir, args, flag):
    res = run_cli("generate", "hello", "--target", tiny_dir["target"], "--drafter", "none", *args)
    assert_clean_error(res)
    others = {"--temperature", "--top-p", "--top-k", "--device", "--dtype", "--linear", "--quantize", "--compile",
              "--ucb-c", "--reward", "--confidence-buckets", "--threads"} - {flag}
    error = res.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {flag}:") and not any(o in error for o in others), error
    assert "loading" not in res.stderr  # refused before anything loads (--threads 0 printed `loading ...` first)


@pytest.mark.parametrize("args,needle", [
    (["generate", "hi", "-n", "abc"], "'--max-new-tokens'"), (["generate", "hi", "--bogus"], "--bogus"),
    (["genrate"], "Did you mean 'generate'"), (["bench", "jsonl", "--limit", "x"], "'--limit'"),
])
def test_usage_errors_are_one_line(args, needle):
    res = run_cli(*args)
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, \
        res.stderr


def test_version_and_help_without_type_labels_on_flags():
    from mambaspec import __version__

    res = run_cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"mambaspec {__version__}"
    for args in (["--help"], ["generate", "--help"], ["bench", "--help"], ["pretrain-drafter", "--help"]):
        res = run_cli(*args)
        assert res.exit_code == 0 and "<bool>" not in res.stdout and "--help" in res.stdout, args
    assert "<int>" in run_cli("generate", "--help").stdout  # options that take a value keep their type


def test_json_tree_says_none_without_a_drafter(tiny_dir):
    rec = json.loads(run_cli("generate", "hi", "--raw", "--target", tiny_dir["target"], "--drafter", "none", "-n", "2",
                             "--json").stdout)
    assert rec["drafter"] == "none" and rec["tree"] == "none" and rec["stats"]["tree"] == "()"


def test_sampling_with_another_tokenizer_is_refused_before_models_load(tiny_dir, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("mambaspec.loading.pipeline.load_model", no_loading)
    res = run_cli("generate", "hi", "--raw", "--target", tiny_dir["target"], "--drafter", tiny_dir["other_tok"],
                  "--temperature", "0.7")
    assert_clean_error(res, "--drafter", "greedy only")
    assert "loading" not in res.stderr
    res = run_cli("generate", "hi", "--raw", "--target", tiny_dir["target"], "--drafter", tiny_dir["other_tok"],
                  "--cross-tokenizer", "off")
    assert_clean_error(res, "different tokenizer")


def test_tune_names_the_best_arm_by_what_it_measured():
    """fixed: the fastest arm over its own rounds; ucb: the bandit's value among firmly measured arms, with a note
    when another arm's own rounds ran faster; the table's caption says which."""
    from mambaspec.bench.tune import FIRM_PULLS, TuneResult, best_arm
    from mambaspec.cli import _best_arm_lines
    from mambaspec.core.bandit import Arm
    from mambaspec.core.shape import TreeShape
    from mambaspec.display import arms_table

    slow_high_value = Arm("chain5", TreeShape.parse("1,1,1,1,1"), pulls=40, tokens=120, seconds=6.2)  # 19.4 tok/s
    fast = Arm("chain2", TreeShape.parse("1,1"), pulls=200, tokens=400, seconds=8.1)  # 49.4 tok/s
    few = Arm("wide", TreeShape.parse("3,2"), pulls=3, tokens=9, seconds=0.1)  # 90 tok/s on 3 rounds
    value = {"chain5": 60.0, "chain2": 50.0, "wide": 99.0}
    arms = [slow_high_value, fast, few]
    assert best_arm(arms, "fixed", lambda a: value[a.name]) is few  # fixed: measured tok/s
    assert best_arm(arms[:2], "fixed", lambda a: value[a.name]) is fast
    assert best_arm(arms, "ucb", lambda a: value[a.name]) is slow_high_value  # 'wide' ran under FIRM_PULLS rounds
    assert few.pulls < FIRM_PULLS <= slow_high_value.pulls

    ucb = TuneResult(arms, slow_high_value, "ucb", 529, 14.4, [value[a.name] for a in arms], 3)
    lines = _best_arm_lines(ucb)
    assert lines[0].startswith("best arm by value: chain5") and "its own rounds 19.4 tok/s" in lines[0]
    assert any(line.startswith("note: chain2's own rounds ran faster (49.4 tok/s") for line in lines)
    fixed = TuneResult(arms[:2], fast, "fixed", 520, 14.3, [value[a.name] for a in arms[:2]], 3)
    assert _best_arm_lines(fixed)[0].startswith("best arm: chain2 (1,1), 49.4 tok/s over its rounds")
    caption = str(arms_table(fixed.rows(), "t", best="chain2", policy="fixed").caption)
    assert "every arm ran every prompt" in caption and "bandit" not in caption
    assert "the bandit ranks" in str(arms_table(ucb.rows(), "t", best="chain5").caption)


@pytest.mark.parametrize("args,flag", [(["--arch", "gru"], "--arch"), (["--steps", "0"], "--steps"),
                                       (["--threads", "0"], "--threads"),
                                       (["--init-from", "no-such-drafter"], "--init-from")])
def test_pretrain_drafter_names_the_flag(args, flag):
    res = run_cli("pretrain-drafter", *args)
    assert_clean_error(res, flag)
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: {flag}")
