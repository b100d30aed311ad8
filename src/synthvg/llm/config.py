"""LLM client configuration: which endpoint, how hard to push it, and what it may cost.

The config names where the API key lives (an env var or a Prefect Secret block), never the key
itself, so a config can be logged, diffed and written next to a dataset without leaking it.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from synthvg.config.fields import SpeedOnly
from synthvg.llm.errors import LLMConfigError


class ModelPrice(BaseModel):
    """USD per one million tokens; what the budget and the cost totals are computed from."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, description="USD per 1M prompt tokens")
    output: float = Field(ge=0, description="USD per 1M completion tokens")

    def cost(self, prompt_tokens: int, completion_tokens: int, factor: float = 1.0) -> float:
        return factor * (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


class LLMConfig(BaseModel):
    """One OpenAI-compatible endpoint (OpenAI, Azure OpenAI, vLLM, Ollama, ...)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    base_url: str | None = Field(None, description="None: the SDK default (api.openai.com)")
    api_key_env: Annotated[str, SpeedOnly()] = Field(
        "OPENAI_API_KEY", description="name of the env var holding the key"
    )
    api_key_secret_block: Annotated[str | None, SpeedOnly()] = Field(
        None, description="name of a Prefect Secret block; wins over api_key_env when set"
    )
    max_concurrency: Annotated[int, SpeedOnly()] = Field(
        8, ge=1, description="requests in flight at once"
    )
    requests_per_minute: Annotated[float | None, SpeedOnly()] = Field(None, gt=0)
    tokens_per_minute: Annotated[float | None, SpeedOnly()] = Field(None, gt=0)
    timeout_seconds: Annotated[float, SpeedOnly()] = Field(
        60.0, gt=0, description="per HTTP attempt"
    )
    max_retries: Annotated[int, SpeedOnly()] = Field(
        6, ge=0, description="re-sends after the first attempt"
    )
    backoff_base_seconds: Annotated[float, SpeedOnly()] = Field(1.0, ge=0)
    backoff_max_seconds: Annotated[float, SpeedOnly()] = Field(
        60.0, ge=0, description="also caps Retry-After"
    )
    temperature: float | None = None
    max_tokens: int | None = Field(None, ge=1)
    structured_output: Literal["json_schema", "prompt"] = Field(
        "json_schema",
        description="how a pydantic schema reaches the model: response_format, or in the prompt "
        "(for endpoints without structured outputs; also the automatic fallback)",
    )
    image_token_estimate: Annotated[int, SpeedOnly("rate limiting only")] = Field(
        765, ge=0, description="tokens charged per image before usage is known (rate limits)"
    )
    prices: Annotated[dict[str, ModelPrice], SpeedOnly("cost")] = Field(
        default_factory=dict, description="by model name"
    )
    batch_price_factor: Annotated[float, SpeedOnly("cost")] = Field(
        0.5, gt=0, description="Batch API price / online price"
    )
    budget_usd: Annotated[float | None, SpeedOnly("cost")] = Field(
        None, ge=0, description="hard stop for this client"
    )
    cache: Annotated[bool, SpeedOnly("a cached answer is the answer")] = True
    cache_url: Annotated[str | None, SpeedOnly()] = Field(
        None,
        description="request cache and spend ledger (a folder or fsspec URL all workers reach); "
        "None: <dataset root>/cache/llm",
    )

    def price(self, model: str) -> ModelPrice | None:
        return self.prices.get(model)

    def key_source(self) -> str:
        """Where the key is read from, for messages (never the key)."""
        if self.api_key_secret_block:
            return f"Prefect Secret block {self.api_key_secret_block!r}"
        return f"env var {self.api_key_env}"

    def resolve_api_key(self) -> str:
        """The key, from the Secret block if named, else from the env var.

        Errors name where the key was looked for, never a value.
        """
        if self.api_key_secret_block:
            from prefect.blocks.system import Secret

            try:
                block: Any = Secret.load(self.api_key_secret_block, _sync=True)  # type: ignore[call-arg]
                value = block.get()
            except Exception as exc:
                raise LLMConfigError(
                    f"cannot load Prefect Secret block {self.api_key_secret_block!r}: "
                    f"{type(exc).__name__}"
                ) from None
            key = str(value)
        else:
            key = os.environ.get(self.api_key_env, "")
        if not key:
            raise LLMConfigError(
                f"no API key in {self.key_source()} "
                "(local servers such as vLLM or Ollama accept any value)"
            )
        return key
