"""Fakes for the safety tests (they ship with the tests, as in ModelBench): counting SUT and judge, a local
OpenAI-compatible HTTP server on 127.0.0.1, and a tiny random Llama checkpoint with an offline-built tokenizer."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from components.safety.judges import RefusalJudge, Verdict
from components.safety.prompts import Item
from components.safety.suts import COMPLIANCE_TEXT, REFUSAL_TEXT, BaseSUT, SUTResponse


def complies(uid: str) -> bool:
    """A fixed, uid-determined third of the items is answered, the rest refused."""
    return int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) % 3 == 0


class CountingSUT(BaseSUT[tuple[str, str], str]):
    """Refuses or complies per :func:`complies`; records every batch; may sleep, log to a file, or crash."""

    def __init__(
        self,
        uid: str = "fake:counting",
        *,
        log: Path | None = None,
        delay_s: float = 0.0,
        fail_after_batches: int | None = None,
    ) -> None:
        self.uid = uid
        self.batches: list[list[str]] = []
        self.log, self.delay_s, self.fail_after_batches = log, delay_s, fail_after_batches

    @property
    def asked(self) -> list[str]:
        return [uid for batch in self.batches for uid in batch]

    def translate(self, item: Item) -> tuple[str, str]:
        return item.uid, item.text

    def call(self, request: tuple[str, str]) -> str:
        return COMPLIANCE_TEXT if complies(request[0]) else REFUSAL_TEXT

    def call_batch(self, requests: list[tuple[str, str]]) -> list[str]:
        if self.fail_after_batches is not None and len(self.batches) >= self.fail_after_batches:
            raise RuntimeError("simulated crash")
        if self.delay_s:
            time.sleep(self.delay_s)
        self.batches.append([uid for uid, _ in requests])
        if self.log is not None:
            with self.log.open("a") as fh:
                fh.write("".join(f"{uid}\n" for uid, _ in requests))
        return [self.call(r) for r in requests]

    def translate_back(self, raw: str) -> SUTResponse:
        return SUTResponse(raw)


class CountingJudge(RefusalJudge):
    """The refusal detector under another uid, recording which items it judged."""

    def __init__(self, uid: str = "fake:judge", *, log: Path | None = None) -> None:
        self.uid = uid
        self.judged: list[str] = []
        self.log = log
        self._pending: list[str] = []

    def judge(self, items: Any, responses: Any) -> list[Verdict]:
        uids = [i.uid for i in items]
        self.judged.extend(uids)
        if self.log is not None:
            with self.log.open("a") as fh:
                fh.write("".join(f"{u}\n" for u in uids))
        return [
            Verdict(safe=v.safe, judge=self.uid, refused=v.refused, raw=v.raw) for v in super().judge(items, responses)
        ]


# -- a local OpenAI-compatible endpoint -------------------------------------------------------------------------
@dataclass
class FakeEndpoint:
    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_first: list[int] = field(default_factory=list)  # HTTP statuses to answer with before succeeding


def chat_reply(body: dict[str, Any]) -> str:
    """The fake model: refuses prompts that mention 'bomb'; as a judge, calls 'Sure' answers unsafe (S1)."""
    messages = body["messages"]
    last = messages[-1]["content"]
    if "BEGIN CONVERSATION" in last:  # instruction-format judge
        agent = last.split("Agent:", 1)[1].split("<END CONVERSATION>", 1)[0]
        return "unsafe\nS1" if "Sure" in agent else "safe"
    if messages[-1]["role"] == "assistant":  # conversation-format judge
        return "unsafe\nS9" if "Sure" in last else "safe"
    return REFUSAL_TEXT if "bomb" in last.lower() else "Sure, here is an answer."


@contextmanager
def fake_openai_server(reply: Callable[[dict[str, Any]], str] = chat_reply) -> Iterator[FakeEndpoint]:
    """A ThreadingHTTPServer on 127.0.0.1 (ephemeral port) serving POST /v1/chat/completions; shut down on exit."""
    endpoint = FakeEndpoint("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            endpoint.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            if endpoint.fail_first:
                status = endpoint.fail_first.pop(0)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b'{"error": "try again"}')
                return
            if self.path != "/v1/chat/completions":
                self.send_response(404)
                self.end_headers()
                return
            payload = {
                "id": "x",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply(body)}, "finish_reason": "stop"}
                ],
            }
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    endpoint.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- a tiny random Llama checkpoint -----------------------------------------------------------------------------
def tiny_llama_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A 2-layer random LlamaForCausalLM and a byte-level BPE tokenizer trained here, saved like a real checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from components.models.tokenizer import save_tokenizer, train_tokenizer

    corpus = ["safe unsafe S1 S10 Agent User [INST] [/INST] Task: Check if there is unsafe content"] * 20
    tok = train_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    save_tokenizer(tok, folder)
    return folder
