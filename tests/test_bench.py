"""`mambaspec bench` on tiny models: CSV, resume, lossless flags, exact prompt lengths, peers, errors."""

import csv
import json
import sys
import types

import pytest
import torch
from rich.console import Console

import mambaspec.bench.methods as methods_mod
from mambaspec import ModelOptions
from mambaspec.bench.datasets import build_prompts, dataset_spec, load_rows, parse_lengths, read_rows
from mambaspec.bench.methods import Method, MethodRun
from mambaspec.bench.peers import full_vocab_assistant
from mambaspec.bench.report import plot_results, results_tables
from mambaspec.bench.results import COLUMNS
from mambaspec.bench.runner import BenchConfig, run_bench
from mambaspec.errors import MambaspecError
from mambaspec.loading.models import load_model
from mambaspec.loading.pipeline import load_drafter
from conftest import run_cli, run_cli_process
from tiny import EOS, VOCAB, char_tokenizer, save_tiny, tiny_llama

NEW = 6
ALL = ["ar", "mamba", "mamba-auto", "mamba-dynamic", "lookup", "mamba+lookup", "mamba+lookup-dynamic",
       "transformer", "eagle", "hf-assisted", "prompt-lookup"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and lose a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    # A Transformer drafter with a draft vocabulary: 40 target ids (EOS included) + the bucket row.
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    ids = sorted({EOS, *range(4, VOCAB, 2)})[:40]
    cfg = LlamaConfig(vocab_size=len(ids) + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=EOS, pad_token_id=EOS)
    dv = save_tiny(root / "llama_dv", LlamaForCausalLM(cfg).eval(), char_tokenizer())
    (root / "llama_dv" / "mambaspec.json").write_text(json.dumps({"draft_vocab": ids, "target_vocab_size": VOCAB}))
    # A Transformer drafter with another tokenizer (and vocabulary size): transformers' universal assisted generation.
    other = save_tiny(root / "llama_other", tiny_llama(4, layers=1, hidden=32, vocab=VOCAB + 4),
                      char_tokenizer(shuffle_seed=7))
    # An EAGLE head of the tiny target (random weights: a lossless check of the plumbing, not of acceptance).
    from mambaspec.drafters.eagle import save_head
    from test_eagle import eagle_for

    eagle = eagle_for(tiny_llama(0))
    save_head(eagle.model, root / "eagle", {"tokenizer": tiny_dir["target"], "target_vocab_size": VOCAB,
                                            "draft_vocab": list(range(VOCAB))})
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"p{i}", "prompt": f"def f(x):\n    return x * {i} + x"})
                                 for i in range(2)))
    words = "state space model drafter memory cache tree token verify accept".split()
    docs = root / "long.jsonl"
    docs.write_text("\n".join(json.dumps({"_id": f"d{i}", "context": " ".join(words[(i + j) % 10] for j in range(n)),
                                          "input": f"Which word comes {i}th?"}) for i, n in enumerate([90, 3, 120])))
    return {**tiny_dir, "llama_dv": dv, "llama_other": other, "prompts": str(prompts), "docs": str(docs), "root": root,
            "eagle": str(root / "eagle")}


def config(files, out, **kw) -> BenchConfig:
    base = dict(dataset="jsonl", data=files["prompts"], target=files["target"], drafter=files["mamba2"],
                transformer_drafter=files["llama_dv"], eagle_drafter=files["eagle"], max_new_tokens=NEW, out=str(out),
                options=ModelOptions(device="cpu"))
    return BenchConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def first_run(files):
    out = files["root"] / "out"
    return out, run_bench(config(files, out, methods=ALL))


# ---------------------------------------------------------------------------------- the bench

def test_csv_has_every_column_and_every_method(first_run):
    out, result = first_run
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    for col in ("new_tokens", "decode_tokens_per_s", "tokens_per_s", "speedup_decode", "mean_accept_len",
                "draft_ms_per_round", "verify_ms_per_round", "prefill_s", "peak_mem_mb", "drafter_state_bytes",
                "target_kv_bytes", "greedy_match", "target", "drafter", "tree", "device", "dtype", "torch",
                "transformers", "git_commit", "date"):
        assert col in COLUMNS
    assert [r["method"] for r in rows] == ALL
    by = {r["method"]: r for r in rows}
    trees = {m: by[m]["tree"] for m in ALL}  # what each method ran, not --tree for all (issue 28)
    assert trees == {"ar": "", "mamba": "(2,1,1)", "mamba-auto": "auto", "mamba-dynamic": "dynamic",
                     "lookup": "(2,1,1)", "mamba+lookup": "(2,1,1)", "mamba+lookup-dynamic": "dynamic",
                     "transformer": "(2,1,1)", "eagle": "(2,1,1)", "hf-assisted": "", "prompt-lookup": ""}
    for r in rows:
        assert int(r["new_tokens"]) == 2 * NEW and int(r["prompts"]) == 2
        assert float(r["decode_tokens_per_s"]) > 0 and float(r["peak_mem_mb"]) > 0
        assert r["mem_measure"] == "cpu_peak_rss_sampled" and r["device"] == "cpu" and r["dtype"] == "float32"
        assert r["torch"] == torch.__version__ and r["date"]
        assert r["target_kv_bytes"] == by["ar"]["target_kv_bytes"] != "0"  # same target, same prompts
        assert r["greedy_match"] == ("" if r["method"] == "ar" else "yes"), r["method"]
        assert r["reference_match"] == ("yes" if r["method"] == "ar" else ""), r["method"]  # transformers' generate
    assert by["ar"]["speedup_decode"] == "1.0" and float(by["mamba"]["speedup_decode"]) > 0
    assert 0 < float(by["mamba"]["mean_tree_nodes"]) <= 6  # tree (2,1,1), cut near the end
    assert int(by["mamba"]["drafter_state_bytes"]) > 0 and int(by["ar"]["drafter_state_bytes"]) == 0
    for r in rows:  # a dynamic policy's predictions against what it measured, over its drafted rounds
        dynamic = r["method"].endswith("dynamic") and r["drafted_accept_len"] != ""
        assert (r["prediction_error"] != "") == dynamic, r["method"]
        if dynamic:
            assert float(r["drafted_accept_len"]) >= 1 and float(r["predicted_accept_len"]) >= 1
    # hf-assisted runs the same Transformer drafter (through its full-vocabulary view): same KV bytes
    assert by["hf-assisted"]["drafter_state_bytes"] == by["transformer"]["drafter_state_bytes"] != "0"
    outputs = [json.loads(line) for line in open(out / "outputs.jsonl")]
    assert len(outputs) == 2 * len(ALL) and all(len(o["new_token_ids"]) == NEW for o in outputs)
    assert len(result.rows) == len(ALL) and result.resumed == 0


def test_rerun_resumes_and_adds_nothing(files, first_run):
    out, _ = first_run
    before = (out / "results.csv").read_bytes(), (out / "outputs.jsonl").read_bytes()
    again = run_bench(config(files, out, methods=ALL))
    assert again.resumed == len(ALL) and len(again.rows) == len(ALL)
    assert ((out / "results.csv").read_bytes(), (out / "outputs.jsonl").read_bytes()) == before


def test_new_configuration_is_not_skipped(files, first_run):
    out, _ = first_run
    result = run_bench(config(files, out, methods=["ar"], tree="1,1"))
    assert result.resumed == 0 and len(result.rows) == 1


def test_ar_always_runs_as_the_reference(files, tmp_path):
    result = run_bench(config(files, tmp_path, methods=["lookup"]))
    assert [r["method"] for r in result.rows] == ["ar", "lookup"]
    assert result.rows[1]["speedup_decode"] > 0 and result.rows[1]["greedy_match"] == "yes"


def test_table_compares_methods(first_run):
    _, result = first_run
    console = Console(record=True, width=250)
    for table in results_tables(result.rows):
        console.print(table)
    text = console.export_text()
    for needle in ("speed-up", "accept len", "peak MiB", "drafter state", "reference", "✓ same as ar", *ALL):
        assert needle in text


def _ar_with_last_token_changed(real_build):
    """A method builder: ``ar`` (as ``real_build`` makes it) whose every output has its last token changed."""
    def build(models, cfg):
        plain = real_build(models, cfg).run

        def run(ids, max_new, seed):
            result = plain(ids, max_new, seed)
            result.new_token_ids[-1] = (result.new_token_ids[-1] + 1) % VOCAB
            return result

        return MethodRun(run, "ar with its last token changed")

    return build


def test_planted_non_lossless_method_is_flagged(files, monkeypatch, tmp_path):
    build = _ar_with_last_token_changed(methods_mod.METHODS["ar"].build)
    monkeypatch.setitem(methods_mod.METHODS, "broken", Method("broken", None, build))
    result = run_bench(config(files, tmp_path, methods=["ar", "broken"]))
    broken = next(r for r in result.rows if r["method"] == "broken")
    assert broken["greedy_match"] == "no" and broken["mismatched_prompts"] == 2
    console = Console(record=True, width=250)
    console.print(*results_tables(result.rows))
    assert "✗ 2/2 differ" in console.export_text()


def test_an_engine_wide_error_is_caught_by_the_outside_reference(files, monkeypatch, tmp_path):
    """ar is every method's reference, so an error shared by every method shows only against transformers' own
    generate: here the engine's plain decoding changes its last token, and every method with it."""
    build = _ar_with_last_token_changed(methods_mod.METHODS["ar"].build)
    monkeypatch.setitem(methods_mod.METHODS, "ar", Method("ar", None, build))
    result = run_bench(config(files, tmp_path, methods=["ar"]))
    ar = result.rows[0]
    assert ar["reference_match"] == f"no (token {NEW - 1})" and float(ar["reference_margin"]) > 0
    console = Console(record=True, width=250)
    console.print(*results_tables(result.rows))
    assert "transformers' generate differs" in console.export_text()


def test_default_methods_skip_what_has_no_drafter(files, tmp_path):
    notes = []
    result = run_bench(config(files, tmp_path, drafter="none", transformer_drafter="none", eagle_drafter="none"),
                       log=notes.append)
    assert [r["method"] for r in result.rows] == ["ar", "lookup", "prompt-lookup"]
    assert any("skipping mamba" in n for n in notes) and any("skipping transformer, hf-assisted" in n for n in notes)


def test_plots(first_run):
    pytest.importorskip("matplotlib")
    out, result = first_run
    paths = plot_results(result.rows, out)
    assert {p.name for p in paths} == {"jsonl-throughput.png", "jsonl-memory.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_plot_without_matplotlib(files, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MambaspecError, match=r"mambaspec\[plot\]"):
        run_bench(config(files, tmp_path, methods=["ar"], plot=True))


# ------------------------------------------------------------------------------- HF assisted

def test_full_vocab_assistant_is_a_same_tokenizer_assistant(files, monkeypatch):
    from transformers import GenerationConfig
    from transformers.generation.candidate_generator import AssistedCandidateGenerator

    target = load_model(files["target"], ModelOptions(device="cpu", linear="torch"))
    drafter = load_drafter(files["llama_dv"], target)
    drafter.bind(VOCAB)
    view = full_vocab_assistant(drafter, VOCAB)
    assert view is not drafter.model and view.config.vocab_size == VOCAB
    ids = torch.tensor([[5, 17, 40, 9, 3, 88, 64]])
    kept = drafter.draft_vocab.to_target
    small = drafter.model(input_ids=drafter.draft_vocab.encode(ids)).logits.float()
    own = small.new_full((*small.shape[:-1], VOCAB), float("-inf"))  # the drafter's logits at the target's width
    own[..., kept] = small[..., :len(kept)]
    full = view(input_ids=ids).logits.float()
    torch.testing.assert_close(full[..., kept], own[..., kept])
    assert (full.argmax(-1) == own.argmax(-1)).all()
    others = torch.ones(VOCAB, dtype=torch.bool)
    others[kept] = False
    assert full[..., others].max() < full[..., kept].min()

    used = []
    original = type(target.model)._get_candidate_generator

    def spy(self, *args, **kwargs):
        used.append(original(self, *args, **kwargs))
        return used[-1]

    monkeypatch.setattr(type(target.model), "_get_candidate_generator", spy)
    target.model.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=view,
                          generation_config=GenerationConfig(max_new_tokens=4, do_sample=False, pad_token_id=EOS))
    assert type(used[0]) is AssistedCandidateGenerator  # not the different-tokenizer generator
    plain = load_drafter(files["llama"], target)  # no draft vocabulary: used as it is
    assert full_vocab_assistant(plain, VOCAB) is plain.model


def test_hf_assisted_with_another_tokenizer(files, tmp_path):
    result = run_bench(config(files, tmp_path, methods=["ar", "hf-assisted"], transformer_drafter=files["llama_other"]))
    hf = result.rows[1]
    assert hf["greedy_match"] == "yes" and hf["drafter_state_bytes"] > 0


# ---------------------------------------------------------------------------------- prompts

def test_parse_lengths():
    assert parse_lengths("1k,2k,4k,8k") == [1000, 2000, 4000, 8000]
    assert parse_lengths("512, 1.5k") == [512, 1500]
    for bad in ("", "k", "-1", "1.5", "2x"):
        with pytest.raises(MambaspecError, match="invalid --lengths"):
            parse_lengths(bad)


@pytest.mark.parametrize("chat", [False, True])
def test_lengths_are_exact_and_keep_the_question(files, chat):
    tok = char_tokenizer()
    if chat:
        tok.chat_template = ("{% for m in messages %}<bos>[user] {{ m['content'] }}\n{% endfor %}"
                             "{% if add_generation_prompt %}[assistant] {% endif %}")
    spec = dataset_spec("longbench")
    rows = read_rows(files["docs"])
    for length in (300, 360):
        prompts, short = build_prompts(spec, rows, tok, length=length)
        assert all(len(p.ids) == length for p in prompts)
        assert short == 1 and len(prompts) == 2  # the 3-word document cannot fill the length: passed over
        text = tok.decode(prompts[0].ids, skip_special_tokens=False)
        row = next(r for r in rows if r["_id"] == prompts[0].id)
        assert row["context"][:12] in text and row["context"][-12:] in text and row["context"] not in text
        assert text.rstrip().endswith("[assistant]" if chat else "Answer:")
        assert f"Question: {row['input']}" in text


def test_prompts_over_the_context_are_cut_to_fit(files):
    tok = char_tokenizer()
    prompts, _ = build_prompts(dataset_spec("longbench"), read_rows(files["docs"]), tok, max_tokens=260)
    assert [len(p.ids) for p in prompts] == [260, len(prompts[1].ids), 260] and len(prompts[1].ids) < 260


def test_humaneval_is_offline():
    spec = dataset_spec("humaneval")
    rows = load_rows(spec)
    assert len(rows) == 164
    prompts, _ = build_prompts(spec, rows, char_tokenizer(), limit=3)
    assert [p.id for p in prompts] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_hub_datasets_go_through_datasets(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(load_dataset=lambda *a, **kw: calls.append((a, kw)) or [{"question": "1+1?"}])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr("mambaspec.bench.datasets.hub_reachable", lambda: True)
    assert load_rows(dataset_spec("gsm8k")) == [{"question": "1+1?"}]
    assert calls == [(("openai/gsm8k", "main"), {"split": "test"})]
    monkeypatch.setattr("mambaspec.bench.datasets.hub_reachable", lambda: False)
    with pytest.raises(MambaspecError, match="not reachable; pass --data FILE"):
        load_rows(dataset_spec("xsum"))


# ----------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kw,needle", [
    ({"dataset": "nope"}, "unknown dataset 'nope'"),
    ({"methods": ["ar", "medusa"]}, "unknown method 'medusa'"),
    ({"data": "/nonexistent.jsonl"}, "cannot read --data /nonexistent.jsonl"),
    ({"dataset": "longbench", "lengths": [1000]}, "exceeds the target's context of 512"),
    ({"dataset": "humaneval", "data": None, "lengths": [100]}, "no long context"),
    ({"methods": ["mamba"], "drafter": "none"}, "needs a Mamba drafter"),
    ({"methods": ["mamba"], "drafter": "llama"}, "is not a Mamba model"),
])
def test_bad_input(files, tmp_path, kw, needle):
    if kw.get("drafter") == "llama":
        kw = {**kw, "drafter": files["llama"]}
    if kw.get("dataset") == "longbench":
        kw = {**kw, "data": files["docs"]}
    with pytest.raises(MambaspecError, match=needle):
        run_bench(config(files, tmp_path, **kw))


def test_bad_data_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{not json\n')
    with pytest.raises(MambaspecError, match="line 2 is not valid JSON"):
        read_rows(bad)
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(MambaspecError, match="has no field 'prompt'"):
        build_prompts(dataset_spec("jsonl"), read_rows(missing), char_tokenizer())


# -------------------------------------------------------------------------------------- CLI

def test_cli_prints_the_table(files, tmp_path):
    res = run_cli("bench", "jsonl", "--data", files["prompts"], "--target", files["target"], "--methods",
                  "ar,prompt-lookup", "-n", "4", "--out", tmp_path, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    assert "speed-up" in res.stdout and "prompt-lookup" in res.stdout and "results.csv" in res.stdout
    assert "tok/s e2e" in res.stdout and "…" not in res.stdout  # nothing squeezed to 80 columns
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 2


def test_cli_errors_are_one_line(tmp_path):
    res = run_cli("bench", "gsm8k", "--out", tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and res.exception is None or isinstance(res.exception, SystemExit)
    assert "--data" in lines[0] and "not reachable" in lines[0]


def test_progress_lines_under_a_log_file(files, tmp_path):
    """With stdout and stderr redirected, every method says when it starts and how far it is, at once."""
    log = tmp_path / "log"
    with log.open("w") as f:
        proc = run_cli_process("bench", "jsonl", "--data", files["prompts"], "--target", files["target"],
                               "--drafter", files["mamba2"], "--methods", "ar,mamba", "-n", "4",
                               "--out", tmp_path / "out", "--device", "cpu", stdout=f, stderr=f)
    text = log.read_text()
    assert proc.returncode == 0, text
    for method in ("ar", "mamba"):
        assert f"{method}: warming up" in text and f"jsonl · {method}: 0/2 prompts" in text
        assert f"jsonl · {method}: 2/2 prompts" in text
    assert text.index("[0:00:") == text.index("[")  # every status line carries the elapsed time


def test_changed_data_file_is_a_new_configuration_and_outputs_are_not_duplicated(files, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text(files["prompts"].read_text() if hasattr(files["prompts"], "read_text")
                    else open(files["prompts"]).read())
    first = run_bench(config(files, tmp_path, data=str(data), methods=["ar", "lookup"]))
    outputs = tmp_path / "outputs.jsonl"
    n_records = len(outputs.read_text().splitlines())
    # a run killed between a method's outputs and its CSV row: the rerun replaces those outputs, adds none twice
    lines = (tmp_path / "results.csv").read_text().splitlines(keepends=True)
    (tmp_path / "results.csv").write_text("".join(lines[:-1]) + lines[-1][:20])  # and the row's line torn
    again = run_bench(config(files, tmp_path, data=str(data), methods=["ar", "lookup"]))
    assert again.resumed == 1 and len(outputs.read_text().splitlines()) == n_records
    assert [r["method"] for r in again.rows] == ["ar", "lookup"]
    data.write_text("\n".join(data.read_text().splitlines()[:1]) + "\n")  # same path, other prompts
    other = run_bench(config(files, tmp_path, data=str(data), methods=["ar", "lookup"]))
    assert other.resumed == 0 and all(r["greedy_match"] in ("yes", None, "") for r in other.rows)
    assert first.rows[0]["config_id"] != other.rows[0]["config_id"]


def test_bad_data_and_greedy_only_drafters_are_refused_before_any_model_loads(files, tmp_path, monkeypatch):
    """A row without the prompt field, an empty prompt, a broken line (its position named), and sampling with a
    drafter of another tokenizer: refused from the file and the tokenizers, no model loaded (issue 28)."""
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("mambaspec.bench.runner.load_model", no_loading)
    cases = [('{"prompt": "fine"}\n{"text": "no prompt"}\n', "line 2 of the data file has no field 'prompt'"),
             ('{"prompt": "fine"}\n\n{"prompt": "  "}\n', "line 3 of the data file makes an empty prompt"),
             ('{"prompt": "fine"}\n{"prompt": "cut off\n', r"line 2 is not valid JSON \(Unterminated string starting "
                                                          r"at: column 12\)")]
    for i, (text, needle) in enumerate(cases):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(text)
        with pytest.raises(MambaspecError, match=needle):
            run_bench(config(files, tmp_path / "out", data=str(path)))
    with pytest.raises(MambaspecError, match="greedy only"):
        run_bench(config(files, tmp_path / "out", methods=["ar", "transformer"], temperature=0.7,
                         transformer_drafter=files["llama_other"]))
    said = []
    with pytest.raises(AssertionError, match="a model was loaded"):  # by default such methods are skipped, not refused
        run_bench(config(files, tmp_path / "out", temperature=0.7, transformer_drafter=files["llama_other"]),
                  log=said.append)
    assert any(m.startswith("skipping transformer:") and "greedy only" in m for m in said), said


def test_a_drafter_retrained_under_the_same_folder_is_a_new_configuration(files, tmp_path):
    """A folder (or a shipped name) whose weights changed is another drafter: its rows are measured again, not
    resumed from its predecessor's (``weights_id`` in the config_id)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from mambaspec.loading.models import weights_id

    drafter = tmp_path / "drafter"
    shutil.copytree(files["mamba2"], drafter)
    same = weights_id(str(drafter))
    assert same and same == weights_id(files["mamba2"])  # content, not path
    first = run_bench(config(files, tmp_path / "out", drafter=str(drafter), methods=["ar", "mamba"]))
    assert run_bench(config(files, tmp_path / "out", drafter=str(drafter), methods=["ar", "mamba"])).resumed == 2
    weights = next(drafter.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] * 1.01  # "retrained"
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights_id(str(drafter)) != same
    again = run_bench(config(files, tmp_path / "out", drafter=str(drafter), methods=["ar", "mamba"]))
    assert again.resumed == 0 and again.rows[0]["config_id"] != first.rows[0]["config_id"]
    assert weights_id("someone/some-model") == ""  # a hub id: nothing is downloaded to fingerprint it
