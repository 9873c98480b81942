"""`mambaspec serve`: the official openai client gets what Pipeline.generate gives, streaming or not; concurrent
clients each get their own output and the metrics add up; a client that leaves frees the engine within a round; bad
input gets an OpenAI error object with a 4xx, and the server keeps serving. Tiny random models (a real uvicorn server
on a free localhost port, in a thread); one slow test with SmolLM2 against `mambaspec generate`."""

import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from mambaspec import ModelOptions, SamplingConfig  # noqa: E402
from mambaspec.core.engine import SpeculativeGenerator  # noqa: E402
from mambaspec.loading.pipeline import load_pipeline  # noqa: E402
from mambaspec.serve.app import bind, make_app, make_server, url  # noqa: E402
from mambaspec.serve.metrics import parse as parse_metrics  # noqa: E402

TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
MODEL = "tiny"
REFERENCES = {}


@contextmanager
def running(pipe, **kwargs):
    """The server for ``pipe`` on a free localhost port, in a thread; its base URL while the block runs."""
    server = make_server(make_app(pipe, MODEL, **kwargs), log_level="warning")
    sock = bind("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    try:
        yield url(sock)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def chat_target(tiny_dir):
    """The tiny target with a chat template (the tiny tokenizer has none)."""
    from tiny import char_tokenizer

    folder = tiny_dir["target"] + "-serve-chat"
    shutil.copytree(tiny_dir["target"], folder, dirs_exist_ok=True)
    tok = char_tokenizer()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(chat_target, tiny_dir):
    """A pipeline of its own, for the outputs the server must reproduce."""
    return load_pipeline(chat_target, tiny_dir["mamba2"], ModelOptions(device="cpu"))


@pytest.fixture(scope="module")
def base_url(chat_target, tiny_dir):
    with running(load_pipeline(chat_target, tiny_dir["mamba2"], ModelOptions(device="cpu")), max_tokens=24) as u:
        yield u


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def metrics(base_url) -> dict:
    return parse_metrics(httpx.get(base_url + "/metrics").text)


def reference_for(reference, drafter=None):
    """The reference pipeline with the request's drafter (the same target and drafter as the server's)."""
    from mambaspec.loading.pipeline import Pipeline, load_drafter

    if drafter is None:
        return reference
    if drafter not in REFERENCES:
        d = load_drafter(drafter, reference.target)
        REFERENCES[drafter] = Pipeline(reference.target, d, SpeculativeGenerator(reference.target.model, d,
                                                                                  tokenizer=reference.target.tokenizer))
    return REFERENCES[drafter]


def expected(reference, prompt, kind="chat", system=None, drafter=None, **kw):
    """What Pipeline.generate gives for a request (greedy unless ``kw`` says otherwise)."""
    kw.setdefault("sampling", SamplingConfig(temperature=0))
    kw.setdefault("max_new_tokens", 24)
    return reference_for(reference, drafter).generate(prompt, chat=kind == "chat", system=system, **kw)


def ask(client, prompt, kind="chat", stream=False, system=None, max_tokens=24, **extra):
    """One request through the official client: (text, finish_reason, usage, speculation)."""
    common = dict(model=MODEL, max_tokens=max_tokens, temperature=extra.pop("temperature", 0), stream=stream,
                  extra_body=extra or None)
    if stream:
        common["stream_options"] = {"include_usage": True}
    if kind == "chat":
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        out = client.chat.completions.create(messages=messages, **common)
    else:
        out = client.completions.create(prompt=prompt, **common)
    if not stream:
        choice = out.choices[0]
        return (choice.message.content if kind == "chat" else choice.text, choice.finish_reason, out.usage,
                out.model_extra["speculation"])
    text, finish, usage, spec = "", None, None, None
    for chunk in out:
        for choice in chunk.choices:
            text += (choice.delta.content or "") if kind == "chat" else choice.text
            finish = choice.finish_reason or finish
        if chunk.usage is not None and not chunk.choices:
            usage, spec = chunk.usage, chunk.model_extra["speculation"]
    return text, finish, usage, spec


def test_models_health_and_metrics(base_url):
    assert [m["id"] for m in httpx.get(base_url + "/v1/models").json()["data"]] == [MODEL]
    health = httpx.get(base_url + "/health").json()
    assert health["status"] == "ok" and set(health["drafters"]) >= {"none", "lookup"}
    text = httpx.get(base_url + "/metrics").text
    assert "# TYPE mambaspec_rounds_total counter" in text and 'mambaspec_tokens_per_round_bucket{le="+Inf"}' in text


@pytest.mark.parametrize("kind", ["chat", "text"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_client_gets_what_generate_gives(client, reference, kind, stream):
    for prompt, system, extra in (("Hello there", None, {}), ("def f(x):", "Be brief.", {"tree": "2,1,1"}),
                                  ("ab ab ab ab", None, {"drafter": "none"}),
                                  ("The sky is", None, {"drafter": "lookup"})):
        if system and kind == "text":
            continue
        want = expected(reference, prompt, kind, system, drafter=extra.get("drafter"))
        text, finish, usage, spec = ask(client, prompt, kind, stream, system, **extra)
        assert text == want.text, (prompt, extra)
        assert finish == ("length" if want.stats.stopped == "max_new_tokens" else "stop")
        assert usage.prompt_tokens == len(want.prompt_ids) and usage.completion_tokens == len(want.new_token_ids)
        assert spec["drafter"] == want.stats.drafter and spec["rounds"] >= 1 and spec["verify_ms"] > 0
        if extra.get("drafter") == "none":
            assert spec["mean_accept_length"] == 1 and spec["nodes_per_round"] == 0


def test_stop_strings_seed_and_conversation(client, reference):
    want = expected(reference, "Hello there", stop=["e"])
    assert ask(client, "Hello there", stop=["e"])[0] == want.text
    sampled = dict(sampling=SamplingConfig(temperature=0.8, top_p=0.9), seed=7, tree="2,1,1")
    want = expected(reference, "Hello there", **sampled)
    got = ask(client, "Hello there", temperature=0.8, top_p=0.9, seed=7, tree="2,1,1")
    assert got[0] == want.text  # a seed reproduces sampled text with a fixed tree
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Bye"}]
    out = client.chat.completions.create(model=MODEL, messages=turns, max_tokens=12, temperature=0)
    tok = reference.target.tokenizer
    ids = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert out.choices[0].message.content == reference.generate(ids, max_new_tokens=12).text


def test_concurrent_streams_each_get_their_own_output(base_url, client, reference):
    """8 streaming clients at once, mixed prompts and settings: each gets its single run's output, and the metrics'
    counters grow by what they received."""
    cases = [("chat", "Hello there", {}), ("text", "def f(x):", {}), ("chat", "ab ab ab", {"drafter": "none"}),
             ("text", "The sky is", {"tree": "1,1,1,1"}), ("chat", "Count: 1 2 3", {"drafter": "lookup"}),
             ("text", "x = [1, 2", {"stop": [","]}), ("chat", "Why?", {"tree": "dynamic"}),
             ("text", "Once upon a time", {"drafter": "none", "stop": ["e"]})]
    wants = [expected(reference, p, k, drafter=e.get("drafter"), stop=e.get("stop")).text for k, p, e in cases]
    before = metrics(base_url)
    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(lambda case: ask(client, case[1], case[0], stream=True, **case[2]), cases))
    after = metrics(base_url)
    assert [g[0] for g in got] == wants
    grew = {k: after[k] - before.get(k, 0) for k in after}
    assert grew['mambaspec_requests_total{endpoint="chat",status="200"}'] == 4
    assert grew['mambaspec_requests_total{endpoint="text",status="200"}'] == 4
    assert grew["mambaspec_completion_tokens_total"] == sum(g[2].completion_tokens for g in got)
    assert grew["mambaspec_prompt_tokens_total"] == sum(g[2].prompt_tokens for g in got)
    assert (grew["mambaspec_rounds_total"] == sum(g[3]["rounds"] for g in got)
            == grew["mambaspec_tokens_per_round_count"])
    assert grew["mambaspec_tokens_per_round_sum"] == grew["mambaspec_completion_tokens_total"]
    assert after["mambaspec_queue_length"] == 0 and after["mambaspec_engine_busy"] == 0


def _slow_pipeline(reference, seconds: float):
    """Plain decoding of the tiny target whose every round takes at least ``seconds``."""
    from mambaspec.core.drafter import NoDrafter
    from mambaspec.loading.pipeline import Pipeline

    class SlowDrafter(NoDrafter):
        def draft(self, *args, **kwargs):
            time.sleep(seconds)
            return super().draft(*args, **kwargs)

    drafter = SlowDrafter()
    return Pipeline(reference.target, drafter, SpeculativeGenerator(reference.target.model, drafter,
                                                                    tokenizer=reference.target.tokenizer))


def test_a_client_that_leaves_frees_the_engine_within_a_round(reference):
    round_s = 0.1
    with running(_slow_pipeline(reference, round_s)) as base:
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 400, "temperature": 0, "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", base + "/v1/completions", json=body) as response:
                assert response.status_code == 200
                data = (line for line in response.iter_lines() if line.startswith("data: "))
                for _ in range(3):
                    next(data)
            left = metrics(base)["mambaspec_rounds_total"]  # the stream is closed: the client is gone
            deadline = time.time() + 5
            while metrics(base)["mambaspec_engine_busy"] and time.time() < deadline:
                time.sleep(round_s / 5)
            done = metrics(base)
            assert done["mambaspec_rounds_total"] - left <= 1  # at most the round under way when the client left
            assert done["mambaspec_requests_cancelled_total"] == 1
            assert done["mambaspec_completion_tokens_total"] < 100
            with pytest.raises(httpx.ReadTimeout):  # a client that gives up on a whole answer frees it too
                http.post(base + "/v1/completions", json={**body, "stream": False}, timeout=0.3)
            deadline = time.time() + 5
            while metrics(base)["mambaspec_requests_cancelled_total"] < 2 and time.time() < deadline:
                time.sleep(round_s / 5)
            assert metrics(base)["mambaspec_requests_cancelled_total"] == 2
            ok = http.post(base + "/v1/completions", json={**body, "stream": False, "max_tokens": 3}).json()
            assert ok["usage"]["completion_tokens"] == 3


def test_a_full_queue_answers_429(reference):
    with running(_slow_pipeline(reference, 0.05), max_queue=1) as base:
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 200, "temperature": 0}
        with httpx.Client(timeout=30) as http, ThreadPoolExecutor(2) as pool:
            running_one = pool.submit(http.post, base + "/v1/completions", json=body, timeout=1.5)
            while not metrics(base)["mambaspec_engine_busy"]:
                time.sleep(0.01)
            waiting = pool.submit(http.post, base + "/v1/completions", json=body, timeout=1.5)
            while not metrics(base)["mambaspec_queue_length"]:
                time.sleep(0.01)
            full = http.post(base + "/v1/completions", json=body)
            assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
            for gave_up in (running_one, waiting):  # the two clients give up: both generations are dropped
                with pytest.raises(httpx.ReadTimeout):
                    gave_up.result()


BAD = [
    ("chat", b"{not json", 400, None),
    ("chat", b"[1, 2]", 400, None),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "foo": 1}, 400, "foo"),
    ("chat", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400, "max_tokens"),
    ("text", {"prompt": "x" * 600}, 400, None),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, None),
    ("chat", {"messages": []}, 400, "messages"),
    ("chat", {"messages": [{"role": "robot", "content": "hi"}]}, 400, None),
    ("chat", {"messages": [{"role": "user", "content": "  "}]}, 400, None),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "tree": "a,b"}, 400, "tree"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "tree": "0"}, 400, "tree"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "drafter": "gpt2"}, 400, "drafter"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "stop": [""]}, 400, "stop"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True}}, 400, None),
    ("text", {"model": MODEL}, 400, "prompt"),
    ("text", {"prompt": [5, 100000]}, 400, "prompt"),
    ("text", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("text", {"prompt": "hi", "echo": True}, 400, None),
    ("text", {"prompt": "hi", "max_tokens": "5"}, 400, "max_tokens"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "tools"),
]


def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(base_url, client, caplog):
    caplog.set_level(logging.DEBUG)
    paths = {"chat": "/v1/chat/completions", "text": "/v1/completions"}
    for kind, body, status, param in BAD:
        for stream in (False, True):
            if isinstance(body, dict):
                content = json.dumps({**body, "stream": stream} if "stream_options" not in body else body).encode()
            else:
                content = body
            r = httpx.post(base_url + paths[kind], content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert error["message"] and error["type"] and (param is None or error["param"] == param), (body, error)
    for method, path, status in (("GET", "/v1/nope", 404), ("GET", "/v1/chat/completions", 405)):
        r = httpx.request(method, base_url + path)
        assert r.status_code == status and r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=10**6)
    assert ask(client, "Hello there")[0]  # still serving
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_serve_command_refuses_bad_options_in_one_line(tiny_dir):
    from conftest import run_cli
    from test_cli import assert_clean_error

    for args, needle in ((["--port", "-1"], "--port"), (["--max-queue", "0"], "--max-queue"),
                         (["--tree", "a,b"], "invalid tree shape"), (["--target", "no-such-model"], "unknown model"),
                         (["--host", "no.such.host.invalid"], "cannot listen")):
        assert_clean_error(run_cli("serve", "--target", tiny_dir["target"], *args), needle)


@pytest.mark.slow
def test_smollm2_held_out_prompts_match_generate(smollm2):
    """10 held-out prompts (recipes/eval): the server's text is `mambaspec generate`'s, chat and raw, streamed and
    not, with the shipped drafter and dynamic trees."""
    from conftest import run_cli

    from mambaspec.config import recipes_dir

    rows = [json.loads(line) for name in ("code", "math", "chat", "summaries")
            for line in (recipes_dir() / "eval" / f"{name}.jsonl").read_text().splitlines()[:3] if line.strip()][:10]
    pipe = load_pipeline("smollm2-135m", options=ModelOptions(device="cpu"))
    with running(pipe) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
        for i, row in enumerate(rows):
            kind, stream = ("chat", "text")[i % 2], i % 4 >= 2
            cli = run_cli("generate", row["prompt"], "-n", "48", "--json", "--threads", "1",
                          *(["--raw"] if kind == "text" else []))
            assert cli.exit_code == 0, cli.stderr
            want = json.loads(cli.stdout)
            text, _, usage, spec = ask(client, row["prompt"], kind, stream, max_tokens=48)
            assert text == want["text"], row["id"]
            assert usage.completion_tokens == len(want["new_token_ids"]) and spec["drafter"] == want["drafter"]
