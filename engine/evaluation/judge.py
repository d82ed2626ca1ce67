"""An LLM judge (the paper graded completions with GPT-4): a 0-3 familiarity grade per completion,
through any OpenAI-compatible chat endpoint. Optional, and the one part of an evaluation that calls out."""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

from ..errors import UserError
from ..secrets import api_key as resolve_key
from ..secrets import Deadline, scrub, within

TIMEOUT_S = 60.0  # per grade, overall: a reply that trickles in is given up here

JUDGE_SYSTEM = (
    "You grade text completions for familiarity with {concept}. Given a prompt and a model's "
    "completion, answer with one digit: 0 = no sign of knowledge of {concept}; 1 = generic content a model "
    "without that knowledge could write; 2 = some content specific to {concept}; 3 = clearly specific "
    "knowledge of {concept} (its names, places, events). Answer with the digit only.")


def judge(items: list[tuple[str, str]], model: str, base_url: str | None = None, key: str | None = None,
          concept: str = "the target text") -> list[int]:
    """0-3 familiarity grade per (prompt, completion).

    The key: `key` (or OBLIVIATE_JUDGE_API_KEY, how a page hands its key field to an evaluation job),
    else OPENAI_API_KEY only when base_url is the endpoint it was configured for (engine.secrets).
    It never appears in messages or errors: every server text is scrubbed."""
    import openai

    key = resolve_key(base_url, key or os.environ.get("OBLIVIATE_JUDGE_API_KEY"))
    if not key and base_url is None:
        raise UserError("the LLM judge needs OPENAI_API_KEY (or a --judge-base-url of a local server)")
    client = openai.OpenAI(api_key=key or "none", base_url=base_url, timeout=TIMEOUT_S, max_retries=3)
    system = JUDGE_SYSTEM.format(concept=concept)

    def grade(item):
        prompt, completion = item
        reply = within(TIMEOUT_S * 4, lambda: client.chat.completions.create(  # 4: the client's own retries
            model=model, temperature=0, max_tokens=4, messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": f"Prompt: {prompt}\nCompletion: {completion}\nGrade (0-3):"}]))
        try:
            content = reply.choices[0].message.content or ""
        except (AttributeError, TypeError, IndexError):  # an HTML page or other non-chat reply
            raise UserError(f"the judge endpoint {base_url or 'api.openai.com'} did not answer like an "
                            "OpenAI-compatible chat endpoint: check the URL (it usually ends in /v1)") from None
        m = re.search(r"[0-3]", content if isinstance(content, str) else "")
        if not m:
            raise UserError(f"the judge's reply has no 0-3 grade: {scrub(content, 60)!r}")
        return int(m.group())

    try:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(grade, items))
    except openai.AuthenticationError:
        raise UserError("the judge endpoint refused the API key (401): check the key for this endpoint") from None
    except (json.JSONDecodeError, openai.APIResponseValidationError):
        raise UserError(f"the judge endpoint {base_url or 'api.openai.com'} did not answer like an OpenAI-compatible "
                        "chat endpoint: check the URL (it usually ends in /v1)") from None
    except Deadline as e:
        raise UserError(f"the judge endpoint {base_url or 'api.openai.com'} gave {e}") from None
    except openai.APIConnectionError:
        raise UserError(f"cannot reach the judge endpoint {base_url or 'api.openai.com'}") from None
    except openai.APIError as e:
        raise UserError(f"the judge endpoint failed: {type(e).__name__}: {scrub(e, 160)}") from None
