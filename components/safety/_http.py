"""A small JSON-over-HTTP POST with bounded retries, for OpenAI-compatible endpoints (no SDK needed).

    from components.safety._http import post_json
    body = post_json("http://127.0.0.1:8000/v1/chat/completions", {...}, headers={...}, timeout=60, retries=2)

Retries only what may pass (HTTP 429 and 5xx, refused or reset connections), with exponential back-off; other
errors raise at once with the server's message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class EndpointError(RuntimeError):
    """An endpoint answered with an error, or not at all after the retries."""


def post_json(
    url: str,
    body: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    retries: int = 2,
    backoff_s: float = 0.5,
) -> dict[str, Any]:
    data = json.dumps(body).encode("utf-8")
    all_headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    last = ""
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, headers=all_headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
            if not isinstance(payload, dict):
                raise EndpointError(f"POST {url}: expected a JSON object, got {type(payload).__name__}")
            return payload
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", errors="replace")[:500]
            last = f"HTTP {e.code}: {detail}"
            if e.code not in RETRY_STATUS:
                raise EndpointError(f"POST {url}: {last}") from e
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last = f"{type(e).__name__}: {e}"
        if attempt < retries:
            time.sleep(backoff_s * 2**attempt)
    raise EndpointError(f"POST {url}: no answer after {retries + 1} attempt(s); last error {last}")
