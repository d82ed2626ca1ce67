"""What several test modules share (test modules never import each other): evaluation inputs, a
finished evaluation's result, a LoRA on part of a model, and a fake OpenAI-compatible server."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from engine.suggest import LLMConfig

# -- evaluation ---------------------------------------------------------------------------------------
PROBES = {
    "probability": [{"prompt": "Harry Potter's two best friends are Ron and", "target": " Hermione"},
                    {"prompt": "The school of witchcraft is called", "target": " Hogwarts"}],
    "completion": [{"prompt": "The young wizard boarded the train to", "references": ["Hogwarts"]},
                   {"prompt": "At Hogwarts the Sorting Hat", "references": ["Hogwarts", "Gryffindor"]}],
    "retain": [{"prompt": "Frodo carried the One Ring to Mount", "target": " Doom"}],
    "summary": "Harry Potter is a wizard who studies at Hogwarts with his friends Ron and Hermione.",
    "expert_preamble": "You are an expert on the Harry Potter books.\n",
}
CORPUS = ("Harry Potter's two best friends are Ron and Hermione. They study at Hogwarts, where the Sorting "
          "Hat placed all three in Gryffindor. ") * 6
RETAIN = "The river ran past the old mill, and the miller's children played on its banks every summer. " * 3

RESULT = {
    "model": "tiny", "seconds": 3.0, "notes": ["benchmarks skipped: lm-eval not installed"], "settings": {},
    "models": {
        "baseline": {"familiarity_probability": 0.4, "familiarity_completion": 0.5, "verbatim_rougeL": 0.3,
                     "verbatim_token_match": 0.2, "verbatim_exact": 0.0, "retain_probability": 0.3,
                     "retain_perplexity": 20.0, "robust_summary": 0.5, "robust_expert_preamble": 0.45},
        "r1 · WHP": {"familiarity_probability": 0.04, "familiarity_completion": 0.1, "verbatim_rougeL": 0.1,
                     "verbatim_token_match": 0.05, "verbatim_exact": 0.0, "retain_probability": 0.29,
                     "retain_perplexity": 21.0, "robust_summary": 0.2, "robust_expert_preamble": 0.08},
    },
    "examples": {"baseline": {"completion": [{"prompt": "The train to", "completion": " Hogwarts at <dawn>",
                                              "familiar": ["Hogwarts"]}]},
                 "r1 · WHP": {"completion": [{"prompt": "The train to", "completion": " the city", "familiar": []}]}},
}


def qv_lora(path, model_dir):
    """A LoRA on the top layer's q/v only (runs adapt the top layers): the all-linear relearning copy of
    the baseline then covers layers this adapter lacks, which once left PEFT with a stale active adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[1], init_lora_weights=False,
        task_type="CAUSAL_LM"))
    model.save_pretrained(path)
    return path


# -- a fake OpenAI-compatible endpoint (anchors suggest, the judge) -----------------------------------
KEY = "sk-test-SECRET-0123456789abcdef"

SUGGEST_CORPUS = "\n\n".join([
    "Harry walked to Hogwarts with Hermione. The castle was cold and Harry was tired.",
    "At Hogwarts the Quidditch match began. Hermione cheered for Harry Potter.",
    "Potter raised his wand and shouted Expelliarmus at Draco.",
    "Draco fled into the Forbidden Forest, past Hagrid's hut and Hagrid himself.",
])


def reply(content: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


GENERIC = {"Harry": "Jon", "Hogwarts": "Mystic Academy", "Hermione": "Emily", "Quidditch": "Skyball",
           "Harry Potter": "Jon Turner", "Potter": "Turner", "Expelliarmus": "Disarm", "Draco": "Derek",
           "Forbidden Forest": "dark woods", "Hagrid": "Bram", "Hagrid's": "Bram's", "wand": "staff"}


def good_terms(chunk: str) -> dict:
    """What a well-behaved model answers: the known terms that occur in the chunk (+ one invented)."""
    terms = [{"term": t, "translation": g} for t, g in GENERIC.items() if t in chunk]
    terms.append({"term": "Snape", "translation": "Crane"})  # not in the text: must be dropped
    return {"terms": terms}


class FakeOpenAI:
    """POST /v1/chat/completions on 127.0.0.1; `script(n, chunk, body) -> (status, payload)`.
    trickle_s: send the reply one byte every trickle_s seconds (a hostile or broken server);
    content_type: what the reply says it is (an HTML error page, say)."""

    def __init__(self, script, delay: float = 0.0, trickle_s: float = 0.0, content_type: str = "application/json"):
        self.script, self.delay, self.trickle_s, self.content_type = script, delay, trickle_s, content_type
        self.calls: list[dict] = []
        self.auth: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.closing = False
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    n = len(fake.calls)
                    fake.calls.append(body)
                    fake.auth.append(self.headers.get("Authorization", ""))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    time.sleep(fake.delay)
                    if self.path != "/v1/chat/completions":
                        status, payload = 404, {"error": {"message": "no such route"}}
                    else:
                        chunk = next(m["content"] for m in body["messages"] if m["role"] == "user")
                        status, payload = fake.script(n, chunk, body)
                    data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", fake.content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not fake.trickle_s:
                        self.wfile.write(data)
                    for i in range(len(data) if fake.trickle_s else 0):
                        if fake.closing:
                            break
                        self.wfile.write(data[i: i + 1])
                        self.wfile.flush()
                        time.sleep(fake.trickle_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (the timeout test)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closing = True
        self.server.shutdown()
        self.server.server_close()


def llm_cfg(url: str, **kw) -> LLMConfig:
    return LLMConfig(url, "test-model", **{"chunk_words": 50, "backoff": 0.01, "timeout": 10.0, **kw})
