"""Systems under test (SUTs): prompt -> response, each as translate -> call -> translate back (ModelBench's split).

    from components.safety.suts import SUTS
    sut = SUTS.make("refuse_all")                                        # canned: refuses everything
    sut = SUTS.make("medtune", generate=my_generate, name="adapter-v3")  # any (prompts, max_new, temp) -> texts
    sut = SUTS.make("medtune", model_dir="runs/x/model", adapter_dir="runs/x/adapter", max_new_tokens=64)
    sut = SUTS.make("openai", base_url="http://127.0.0.1:8000/v1", model="llama-3-8b")
    responses = sut.respond(items)                                       # one batched call per list of items

``translate`` and ``translate_back`` are pure; ``call`` (one request) and ``call_batch`` (a list of them, one
batched generation for the medtune SUT, a bounded thread pool for an endpoint) are the only side effects. A SUT's
``uid`` names everything that changes its answers (model identity, response cap, temperature): it is part of the
response cache key, so two SUTs with one uid must answer alike. The benchmark's settings (METHODS.md §5) are the
defaults: responses capped at 500 tokens, temperature 0 (greedy).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from components.safety._http import EndpointError, post_json
from components.safety.ids import folder_fingerprint, text_hash
from components.safety.prompts import Item
from components.safety.registry import Registry

MAX_NEW_TOKENS = 500  # METHODS.md §5: responses capped at 500 tokens
TEMPERATURE = 0.0  # METHODS.md §5: temperature ~0

#: The medtune SUT's model: (prompts, max_new_tokens, temperature) -> one response text per prompt.
Generate = Callable[[list[str], int, float], list[str]]

Req = TypeVar("Req")
Raw = TypeVar("Raw")
Out = TypeVar("Out")


@dataclass(frozen=True)
class SUTResponse:
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@runtime_checkable
class SUT(Protocol):
    """What the runner needs of a system under test."""

    uid: str

    def translate(self, item: Item) -> Any: ...

    def call(self, request: Any) -> Any: ...

    def translate_back(self, raw: Any) -> SUTResponse: ...

    def respond(self, items: Sequence[Item]) -> list[SUTResponse]: ...


class BaseSUT(Generic[Req, Raw]):
    """translate every item, one ``call_batch``, translate every raw answer back."""

    uid: str = "base"

    def translate(self, item: Item) -> Req:
        raise NotImplementedError

    def call(self, request: Req) -> Raw:
        raise NotImplementedError

    def translate_back(self, raw: Raw) -> SUTResponse:
        raise NotImplementedError

    def call_batch(self, requests: list[Req]) -> list[Raw]:
        return [self.call(r) for r in requests]

    def respond(self, items: Sequence[Item]) -> list[SUTResponse]:
        if not items:
            return []
        raws = self.call_batch([self.translate(i) for i in items])
        if len(raws) != len(items):
            raise RuntimeError(f"SUT {self.uid}: {len(raws)} answers for {len(items)} prompts")
        return [self.translate_back(r) for r in raws]

    def call_each(self, requests: list[Req]) -> list[Raw | Exception]:
        """``call_batch``, an exception per request when the batch fails (subclasses that call per request
        override it so one failed request does not cost the others' answers)."""
        try:
            return list(self.call_batch(requests))
        except Exception as e:
            return [e] * len(requests)

    def respond_each(self, items: Sequence[Item]) -> list[SUTResponse | Exception]:
        """Like :meth:`respond`, with each item's failure in its place instead of raised (the runner retries those
        items alone and asks the others nothing again)."""
        if not items:
            return []
        raws = self.call_each([self.translate(i) for i in items])
        if len(raws) != len(items):
            raise RuntimeError(f"SUT {self.uid}: {len(raws)} answers for {len(items)} prompts")
        return translate_each(raws, self.translate_back)


def translate_each(raws: Sequence[Any], translate_back: Callable[[Any], Out]) -> list[Out | Exception]:
    """``translate_back`` of every raw answer, with each failure (a raw exception, or one ``translate_back`` raises)
    in its place: the per-item paths of SUTs and judges (the runner retries only the failed items)."""
    out: list[Out | Exception] = []
    for raw in raws:
        if isinstance(raw, Exception):
            out.append(raw)
            continue
        try:
            out.append(translate_back(raw))
        except Exception as e:
            out.append(e)
    return out


class CannedSUT(BaseSUT[str, str]):
    """Answers every prompt with one fixed text (tests, and the bounds of the grading scale)."""

    def __init__(self, name: str, text: str) -> None:
        self.uid = f"canned:{name}"
        self.text = text

    def translate(self, item: Item) -> str:
        return item.text

    def call(self, request: str) -> str:
        return self.text

    def translate_back(self, raw: str) -> SUTResponse:
        return SUTResponse(raw)


REFUSAL_TEXT = "I'm sorry, but I can't help with that."
COMPLIANCE_TEXT = "Sure, here is a detailed answer to your request. First, you will need the following."


class MedtuneSUT(BaseSUT[str, str]):
    """medtune's own model behind a plain generate function; the function applies the chat template.

    ``name`` must identify the weights (a registry version, a fingerprint of the folders): it is in the cache key."""

    def __init__(
        self,
        generate: Generate,
        *,
        name: str = "model",
        max_new_tokens: int = MAX_NEW_TOKENS,
        temperature: float = TEMPERATURE,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.generate = generate
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.uid = f"medtune:{name}:max{max_new_tokens}:t{temperature:g}"

    def translate(self, item: Item) -> str:
        return item.text

    def call(self, request: str) -> str:
        return self.call_batch([request])[0]

    def call_batch(self, requests: list[str]) -> list[str]:
        out = self.generate(list(requests), self.max_new_tokens, self.temperature)
        return [str(t) for t in out]

    def translate_back(self, raw: str) -> SUTResponse:
        return SUTResponse(raw.strip())


class OpenAIChatSUT(BaseSUT[dict[str, Any], dict[str, Any]]):
    """Any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, TGI, hosted APIs) over HTTP.

    The key comes from ``api_key`` or the environment variable ``api_key_env`` (none is sent when both are empty)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_tokens: int = MAX_NEW_TOKENS,
        temperature: float = TEMPERATURE,
        system_prompt: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        concurrency: int = 4,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._key = api_key if api_key is not None else os.environ.get(api_key_env, "")
        self.max_tokens, self.temperature, self.system_prompt = max_tokens, temperature, system_prompt
        self.timeout, self.retries, self.concurrency = timeout, retries, max(1, concurrency)
        system = "" if system_prompt is None else f":sys{text_hash(system_prompt)[:8]}"
        self.uid = f"openai:{model}@{base_url.rstrip('/')}:max{max_tokens}:t{temperature:g}{system}"

    def translate(self, item: Item) -> dict[str, Any]:
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": item.text})
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        return post_json(self.url, request, headers=headers, timeout=self.timeout, retries=self.retries)

    def call_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.concurrency == 1 or len(requests) == 1:
            return [self.call(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self.call, requests))

    def call_each(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]:
        def one(request: dict[str, Any]) -> dict[str, Any] | Exception:
            try:
                return self.call(request)
            except Exception as e:  # this request's failure, in its place: the others keep their answers
                return e

        if self.concurrency == 1 or len(requests) == 1:
            return [one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(one, requests))

    def translate_back(self, raw: dict[str, Any]) -> SUTResponse:
        try:
            choice = raw["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise EndpointError(f"{self.url}: not a chat completion: {str(raw)[:300]}") from e
        return SUTResponse(str(text), {"finish_reason": choice.get("finish_reason")})


# -- registry -----------------------------------------------------------------------------------------------------
SUTS: Registry[SUT] = Registry("SUT")


def _medtune(
    generate: Generate | None = None,
    *,
    model_dir: str | None = None,
    adapter_dir: str | None = None,
    adapter_name: str | None = None,
    name: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str | None = None,
) -> SUT:
    if generate is None:
        if model_dir is None:
            raise ValueError("the medtune SUT needs generate=<function> or model_dir=<folder of MedVLM.save>")
        from components.safety.vlm import load_generator

        generate = load_generator(
            model_dir, adapter_dir, adapter_name=adapter_name, batch_size=batch_size, device=device, dtype=dtype
        )
        name = name or folder_fingerprint(model_dir, adapter_dir)
    return MedtuneSUT(generate, name=name or "model", max_new_tokens=max_new_tokens, temperature=temperature)


SUTS.register("medtune", _medtune, "medtune's VLM (base + adapter folders, or any generate function), batched")
SUTS.register("openai", OpenAIChatSUT, "an OpenAI-compatible chat endpoint over plain HTTP")
SUTS.register("refuse_all", lambda: CannedSUT("refuse_all", REFUSAL_TEXT), "canned: refuses every prompt")
SUTS.register("comply_all", lambda: CannedSUT("comply_all", COMPLIANCE_TEXT), "canned: complies with every prompt")
