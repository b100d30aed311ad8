"""The one LLM client every model-backed stage uses (GPT-4V teacher, VQA filter, SG-EDIT editor).

It is shared so that the things that cost money or break builds are solved once: the on-disk
request cache (a rebuilt or resumed dataset never pays twice for the same request), retries
with backoff that honour Retry-After, client-side RPM/TPM limits and a concurrency cap shared by
all of a stage's worker threads, strict structured output with one repair request, cost totals
with a hard budget, Batch API mode at half price, and keeping the API key out of logs, errors
and files. Any OpenAI-compatible endpoint works (OpenAI, Azure OpenAI, vLLM, Ollama).
``synthvg.llm.testing`` holds a local fake server for tests and benchmarks.
"""

from synthvg.llm.batch import BatchJob, BatchReport
from synthvg.llm.cache import RequestCache, request_key
from synthvg.llm.client import LLMClient
from synthvg.llm.config import LLMConfig, ModelPrice
from synthvg.llm.errors import (
    BudgetExceeded,
    LLMConfigError,
    LLMError,
    LLMRequestError,
    LLMRetryExhausted,
    LLMUnreachable,
    ResponseFormatRejected,
    SendingDisabled,
    StructuredOutputError,
    failure_kind,
)
from synthvg.llm.ledger import BudgetAccount, SpendLedger, spend_totals
from synthvg.llm.limits import RateLimiter, parse_duration, parse_rate_limit_headers
from synthvg.llm.messages import image_part, text_part
from synthvg.llm.redact import RedactingFilter, install_log_redaction, redact
from synthvg.llm.results import LLMResult, PreparedRequest, TokenUsage, UsageTotals

__all__ = [
    "BatchJob",
    "BatchReport",
    "BudgetAccount",
    "BudgetExceeded",
    "LLMClient",
    "LLMConfig",
    "LLMConfigError",
    "LLMError",
    "LLMRequestError",
    "LLMResult",
    "LLMRetryExhausted",
    "LLMUnreachable",
    "ModelPrice",
    "PreparedRequest",
    "RateLimiter",
    "RedactingFilter",
    "RequestCache",
    "ResponseFormatRejected",
    "SendingDisabled",
    "SpendLedger",
    "StructuredOutputError",
    "TokenUsage",
    "UsageTotals",
    "image_part",
    "failure_kind",
    "install_log_redaction",
    "parse_duration",
    "parse_rate_limit_headers",
    "redact",
    "request_key",
    "spend_totals",
    "text_part",
]
