"""Drives `phiforge serve` through the official `openai` Python client, as a new user would.

Usage: drive.py BASE_URL MODEL. Prints one JSON object with what each call gave; any error that
is not the expected one propagates (a non-zero exit status).
"""

import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
out = {}

out["models"] = [m.id for m in client.models.list()]

question = [{"role": "user", "content": "Tell me about the number 3."}]
r = client.chat.completions.create(
    model=model, messages=question, temperature=0, max_completion_tokens=8
)
out["chat"] = {
    "text": r.choices[0].message.content,
    "finish_reason": r.choices[0].finish_reason,
    "usage": [r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens],
}

r = client.chat.completions.create(
    model=model, messages=question, temperature=0.9, seed=5, n=3, max_tokens=6
)
out["n"] = {
    "indexes": [c.index for c in r.choices],
    "texts": [c.message.content for c in r.choices],
    "usage": [r.usage.prompt_tokens, r.usage.completion_tokens],
}

# The same three choices streamed: each choice's deltas carry its index.
streamed = ["", "", ""]
for c in client.chat.completions.create(
    model=model, messages=question, temperature=0.9, seed=5, n=3, max_tokens=6, stream=True
):
    for choice in c.choices:
        streamed[choice.index] += choice.delta.content or ""
out["n"]["streamed"] = streamed

chunks = list(
    client.chat.completions.create(
        model=model,
        messages=question,
        temperature=0,
        max_completion_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
)
out["stream"] = {
    "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
    "finish_reason": [c.choices[0].finish_reason for c in chunks if c.choices][-1],
    "usage": [chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens],
    "last_has_choices": bool(chunks[-1].choices),
}

r = client.completions.create(model=model, prompt="Once upon a time", temperature=0, max_tokens=5)
out["completion"] = {"text": r.choices[0].text, "finish_reason": r.choices[0].finish_reason}

refused = {}
for name, extra in [
    ("presence_penalty", {"presence_penalty": 0.5}),
    ("frequency_penalty", {"frequency_penalty": 0.5}),
    ("logit_bias", {"logit_bias": {"10": 5}}),
    ("top_logprobs", {"logprobs": True, "top_logprobs": 2}),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
    ("response_format", {"response_format": {"type": "json_object"}}),
]:
    try:
        client.chat.completions.create(model=model, messages=question, max_tokens=2, **extra)
        refused[name] = "accepted"
    except openai.BadRequestError as e:
        refused[name] = e.body.get("message", "") if isinstance(e.body, dict) else str(e.body)
out["refused"] = refused

print(json.dumps(out))
