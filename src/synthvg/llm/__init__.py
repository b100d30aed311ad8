"""The one LLM client every model-backed stage uses (GPT-4V teacher, VQA filter, SG-EDIT editor).

It is shared so that the things that cost money or break builds are solved once: the on-disk
request cache (a rebuilt or resumed dataset never pays twice for the same request), retries
with backoff that honour Retry-After, client-side RPM/TPM limits and a concurrency cap shared by
all of a stage's worker threads, strict structured output with one repair request, cost totals
with a hard budget, Batch API mode at half price, and keeping the API key out of logs, errors
and files. Any OpenAI-compatible endpoint works (OpenAI, Azure OpenAI, vLLM, Ollama).
``synthvg.llm.testing`` holds a local fake server for tests and benchmarks.
"""

from typing import TYPE_CHECKING

from synthvg.lazy import lazy_getattr

# ``redact`` shares its name with its module: bound now, so importing ``synthvg.llm.redact``
# later cannot leave the module where the function is expected (the module is light).
from synthvg.llm.redact import redact

# Names resolve on first use (PEP 562): the config schema imports synthvg.llm.config, and
# commands that never call a model (sql, stats, show) must not pay for the openai SDK.
_EXPORTS = {
    "BatchJob": "synthvg.llm.batch",
    "BatchReport": "synthvg.llm.batch",
    "RequestCache": "synthvg.llm.cache",
    "request_key": "synthvg.llm.cache",
    "LLMClient": "synthvg.llm.client",
    "LLMConfig": "synthvg.llm.config",
    "ModelPrice": "synthvg.llm.config",
    "BudgetExceeded": "synthvg.llm.errors",
    "LLMConfigError": "synthvg.llm.errors",
    "LLMError": "synthvg.llm.errors",
    "LLMRequestError": "synthvg.llm.errors",
    "LLMRetryExhausted": "synthvg.llm.errors",
    "LLMUnreachable": "synthvg.llm.errors",
    "SendingDisabled": "synthvg.llm.errors",
    "failure_kind": "synthvg.llm.errors",
    "BudgetAccount": "synthvg.llm.ledger",
    "SpendLedger": "synthvg.llm.ledger",
    "spend_totals": "synthvg.llm.ledger",
    "ResponseFormatRejected": "synthvg.llm.errors",
    "StructuredOutputError": "synthvg.llm.errors",
    "RateLimiter": "synthvg.llm.limits",
    "parse_duration": "synthvg.llm.limits",
    "parse_rate_limit_headers": "synthvg.llm.limits",
    "image_part": "synthvg.llm.messages",
    "text_part": "synthvg.llm.messages",
    "RedactingFilter": "synthvg.llm.redact",
    "install_log_redaction": "synthvg.llm.redact",
    "LLMResult": "synthvg.llm.results",
    "PreparedRequest": "synthvg.llm.results",
    "TokenUsage": "synthvg.llm.results",
    "UsageTotals": "synthvg.llm.results",
}


if TYPE_CHECKING:  # the same names, eagerly, for type checkers (tests/test_lazy_exports.py)
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
    from synthvg.llm.redact import RedactingFilter, install_log_redaction
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


__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)
