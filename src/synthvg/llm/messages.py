"""Content parts for vision requests.

Images travel inline as base64 data URLs: the request (and so its cache key) then depends on
the image bytes themselves, not on a path or URL whose content could change.
"""

from __future__ import annotations

import base64
from typing import Any, Literal


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part(
    data: bytes,
    mime: str = "image/png",
    *,
    detail: Literal["low", "high", "auto"] | None = None,
) -> dict[str, Any]:
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    image: dict[str, Any] = {"url": url}
    if detail is not None:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}
