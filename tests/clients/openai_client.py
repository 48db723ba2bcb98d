"""Drives tokengate with the official `openai` Python SDK, as any OpenAI client would.

usage: openai_client.py BASE_URL API_KEY USER_ID chat|blocked|responses
Prints one JSON object with what the SDK returned or raised.
"""
import json
import sys

import openai

base_url, api_key, user, mode = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key=api_key, default_headers={"X-LibreChat-User-Id": user})
messages = [{"role": "user", "content": "Olá, tudo bem?"}]
out = {}
if mode == "chat":
    r = client.chat.completions.create(model="fake-model", messages=messages, max_tokens=5)
    out["nonstream_text"] = r.choices[0].message.content
    out["nonstream_total"] = r.usage.total_tokens
    text, usage = "", None
    for chunk in client.chat.completions.create(model="fake-model", messages=messages, stream=True, max_tokens=7):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage.total_tokens
    out["stream_text"] = text
    out["stream_total"] = usage
elif mode == "responses":
    r = client.responses.create(model="fake-model", input="Olá, tudo bem?", max_output_tokens=20)
    out["nonstream_text"] = r.output_text
    out["nonstream_total"] = r.usage.total_tokens
    text, usage = "", None
    for event in client.responses.create(model="fake-model", input="Olá, tudo bem?", stream=True, max_output_tokens=24):
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            usage = event.response.usage.total_tokens
    out["stream_text"] = text
    out["stream_total"] = usage
else:
    try:
        client.chat.completions.create(model="fake-model", messages=messages)
        out["blocked"] = None
    except openai.RateLimitError as e:
        out["blocked"] = {"status": e.status_code, "code": e.code, "message": e.message}
print(json.dumps(out))
