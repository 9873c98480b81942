"""The OpenAI wire format: requests checked into a ``GenerationRequest``, results and errors turned into JSON.

Only what the engine does is accepted. OpenAI fields that would change the output in ways it cannot
(``n`` > 1, penalties, logprobs, ``echo``, ...) are refused unless they carry their neutral value, and
fields no one defines are refused by name, so a client never gets an answer to a question it did not
ask. Extra fields (as vLLM and llama.cpp have them): ``tree``, ``drafter``, ``top_k``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..core.engine import GenerationResult, encode_prompt
from ..core.sampling import SamplingConfig
from ..core.shape import TreeShape
from ..errors import MambaspecError
from ..loading.trees import policy_name

NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False, "top_logprobs": None,
           "logit_bias": {}, "echo": False, "best_of": 1, "suffix": None}  # accepted only with these values
FINISH = {"eos": "stop", "stop": "stop", "max_new_tokens": "length", "context": "length"}


class ApiError(Exception):
    """An OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default: 1 (sampling); send 0 for greedy
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    tree: str | None = None  # a shape ("2,1,1"), "dynamic" or "auto"; default: the server's --tree
    drafter: str | None = None  # the server's drafter, "lookup" or "none" (plain decoding)
    n: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None

    @model_validator(mode="after")
    def _neutral(self):
        for name in NEUTRAL:
            value = getattr(self, name, None)
            if value is not None and value != NEUTRAL[name]:
                raise ValueError(f"'{name}' = {value!r} is not supported by this server (only {NEUTRAL[name]!r})")
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed with 'stream': true")
        return self


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Common):
    prompt: Union[str, list[int], list[str]]
    echo: Any = None
    best_of: Any = None
    suffix: Any = None


@dataclass
class GenerationRequest:
    """One request as the engine runs it."""

    kind: str  # "chat" or "text"
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingConfig
    seed: int | None
    stop: list[str]
    tree: str | None  # None: the server's default
    drafter: str | None  # None: the server's drafter
    stream: bool
    include_usage: bool
    model: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def parse(schema: type[_Common], body: object) -> _Common:
    """The request body checked against ``schema``; the first problem as a 400 naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return schema.model_validate(body, strict=True)  # "5" is not a number, "true" not a boolean
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            known = ", ".join(sorted(schema.model_fields))
            raise ApiError(400, f"unknown field '{where}' (this server accepts: {known})", param=where) from None
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{where}: {message}" if where else message, param=where or None) from None


def check_tree(tree: str | None) -> str | None:
    """A request's ``tree``: ``dynamic``, ``auto`` or a shape that drafts something."""
    if tree is None or policy_name(tree) is not None:
        return tree
    try:
        shape = TreeShape.parse(tree)
    except MambaspecError as e:
        raise ApiError(400, f"tree: {e}", param="tree") from None
    if not shape.branching:
        raise ApiError(400, f"tree '{tree}' drafts nothing; for plain decoding send \"drafter\": \"none\"",
                       param="tree")
    return tree


def stop_strings(stop: str | list[str] | None) -> list[str]:
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not s for s in strings):
        raise ApiError(400, "stop: empty strings never match; leave them out", param="stop")
    return strings


def chat_prompt(tokenizer, messages: list[Message]) -> list[int]:
    """Token ids of a conversation, ready for the assistant's turn. One user message (after at most one system
    message) is encoded exactly as ``mambaspec generate`` encodes its prompt (``--system``)."""
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
    roles = [t["role"] for t in turns]
    if roles in (["user"], ["system", "user"]):
        return encode_prompt(tokenizer, turns[-1]["content"], chat=True,
                             system=turns[0]["content"] if len(turns) == 2 else None)
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "this model has no chat template: send one user message (after at most one system "
                            "message), or use /v1/completions", param="messages")
    ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def text_prompt(tokenizer, prompt: str | list[int] | list[str], vocab_size: int) -> list[int]:
    """Token ids of a completion prompt: text (no chat template, as ``generate --raw``) or token ids."""
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) > 1:
            raise ApiError(400, "prompt: one prompt per request (send several requests)", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return encode_prompt(tokenizer, prompt, chat=False)
    if not prompt:
        raise ApiError(400, "prompt: the prompt is empty", param="prompt")
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        raise ApiError(400, f"prompt: token ids must be in [0, {vocab_size})", param="prompt")
    return prompt


def budget(prompt_tokens: int, max_tokens: int | None, default: int, context: int, prompt_field: str) -> int:
    """Tokens to generate: ``max_tokens``, refused when the prompt and it exceed the context; else ``default``,
    capped at the context."""
    if prompt_tokens >= context:
        raise ApiError(400, f"the prompt has {prompt_tokens} tokens but the model's context is {context}; "
                            f"shorten it", param=prompt_field, code="context_length_exceeded")
    if max_tokens is None:
        return min(default, context - prompt_tokens)
    if prompt_tokens + max_tokens > context:
        raise ApiError(400, f"max_tokens: {max_tokens} new tokens after a prompt of {prompt_tokens} exceed the "
                            f"model's context of {context}; ask for at most {context - prompt_tokens}",
                       param="max_tokens", code="context_length_exceeded")
    return max_tokens


def usage(result: GenerationResult) -> dict:
    prompt, completion = len(result.prompt_ids), len(result.new_token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def speculation(result: GenerationResult, queue_s: float) -> dict:
    """What speculation did for this request (llama.cpp's ``timings``, SGLang's ``spec_accept_length``)."""
    s = result.stats
    return {"drafter": s.drafter, "tree": s.tree, "rounds": s.rounds,
            "mean_accept_length": round(s.mean_accept_len, 4),  # tokens per round: accepted drafts + the target's
            "nodes_per_round": round(s.mean_tree_nodes, 4), "draft_ms": round(s.draft_s * 1e3, 3),
            "verify_ms": round(s.verify_s * 1e3, 3), "prefill_ms": round(s.prefill_s * 1e3, 3),
            "queue_ms": round(queue_s * 1e3, 3), "tokens_per_second": round(s.tokens_per_s, 3)}


def _envelope(req: GenerationRequest, chunk: bool) -> dict:
    if req.kind == "chat":
        return {"id": f"chatcmpl-{req.id}", "object": "chat.completion.chunk" if chunk else "chat.completion",
                "created": req.created, "model": req.model}
    return {"id": f"cmpl-{req.id}", "object": "text_completion", "created": req.created, "model": req.model}


def _choice(req: GenerationRequest, text: str | None, finish: str | None, chunk: bool, first: bool = False) -> dict:
    if req.kind == "text":
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    if not chunk:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}
    delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def completion(req: GenerationRequest, result: GenerationResult, queue_s: float) -> dict:
    """The whole answer: ``chat.completion`` or ``text_completion``, with ``usage`` and ``speculation``."""
    return {**_envelope(req, chunk=False),
            "choices": [_choice(req, result.text, FINISH.get(result.stats.stopped, "stop"), chunk=False)],
            "usage": usage(result), "speculation": speculation(result, queue_s)}


def chunk(req: GenerationRequest, text: str | None = None, first: bool = False) -> dict:
    """One streamed piece of text (a chat stream's first chunk carries the role)."""
    return {**_envelope(req, chunk=True), "choices": [_choice(req, text, None, chunk=True, first=first)]}


def final_chunks(req: GenerationRequest, result: GenerationResult, queue_s: float) -> list[dict]:
    """The stream's end: a chunk with the finish reason, ``usage`` and ``speculation`` (as llama.cpp's last chunk
    has its timings), then with ``stream_options.include_usage`` OpenAI's own usage chunk (no choices)."""
    done = {**_envelope(req, chunk=True), "usage": usage(result), "speculation": speculation(result, queue_s)}
    last = {**done, "choices": [_choice(req, None, FINISH.get(result.stats.stopped, "stop"), chunk=True)]}
    return [last, {**done, "choices": []}] if req.include_usage else [last]
