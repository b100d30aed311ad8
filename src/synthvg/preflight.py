"""Cheap checks before a build spends anything: keys, endpoints, models, weights and inputs.

``synthvg build --check`` runs only these; ``synthvg build`` runs them before any stage. Each
problem is one line. Per OpenAI-compatible endpoint of an active stage: the key is present,
one authenticated ``GET /models`` (free) is accepted, and the configured model is among those
listed, where the endpoint lists models (servers without ``/models`` get only the key check;
nothing paid is ever sent). Per local path the config names (seed files and folders, model
weights, synonym and id files): it exists.
"""

from __future__ import annotations

import fsspec

from synthvg.llm import LLMConfig, LLMConfigError, redact
from synthvg.llm.client import DEFAULT_BASE_URL
from synthvg.llm.redact import register_secret
from synthvg.schemas.config import BuildConfig, input_paths
from synthvg.stages.llm_stage import llm_sections

#: Seconds one ``GET /models`` may take: a preflight that hangs is worse than none.
MODELS_TIMEOUT = 15.0


class PreflightFailed(RuntimeError):
    """The build cannot start; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def check_paths(config: BuildConfig) -> list[str]:
    problems = []
    for where, path in input_paths(config):
        try:
            fs, p = fsspec.core.url_to_fs(path)
            found = fs.exists(p)
        except Exception as exc:  # noqa: BLE001 - an unreachable store is a problem line too
            problems.append(f"{where}: cannot check {path} ({type(exc).__name__}: {exc})")
            continue
        if not found:
            problems.append(f"{where}: no such file or folder: {path}")
    return problems


def check_endpoint(
    where: str, cfg: LLMConfig, listed: dict[tuple[str, str], list[str] | None]
) -> list[str]:
    """Problems of one endpoint config; ``listed`` caches each (endpoint, key source)'s models."""
    import openai

    endpoint = (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")
    try:
        key = cfg.resolve_api_key()
    except LLMConfigError as exc:
        return [f"{where}: {endpoint}: {exc}"]
    register_secret(key)
    cache_key = (endpoint, cfg.key_source())
    if cache_key not in listed:
        client = openai.OpenAI(
            base_url=cfg.base_url,
            api_key=key,
            max_retries=0,
            timeout=min(cfg.timeout_seconds, MODELS_TIMEOUT),
        )
        try:
            listed[cache_key] = [m.id for m in client.models.list().data]
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            return [
                redact(
                    f"{where}: {endpoint} rejected the key from {cfg.key_source()} (HTTP {exc.status_code})"
                )
            ]
        except openai.NotFoundError:
            listed[cache_key] = None  # the endpoint lists no models: nothing more to check for free
        except openai.APITimeoutError:
            return [
                f"{where}: {endpoint} did not answer GET /models within {MODELS_TIMEOUT:g}s: check base_url"
            ]
        except openai.APIConnectionError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
            return [
                f"{where}: cannot reach {endpoint} ({cause}): check base_url and that the server is running"
            ]
        except openai.APIStatusError as exc:
            return [redact(f"{where}: {endpoint} answered GET /models with HTTP {exc.status_code}")]
        finally:
            client.close()
    models = listed[cache_key]
    if models and cfg.model not in models:
        shown = ", ".join(sorted(models)[:5]) + (", ..." if len(models) > 5 else "")
        return [
            f"{where}: model {cfg.model!r} is not among the {len(models)} models {endpoint} serves ({shown})"
        ]
    return []


def preflight(config: BuildConfig, *, network: bool = True) -> list[str]:
    """Every problem found, one line each (empty: the build may start)."""
    problems = check_paths(config)
    listed: dict[tuple[str, str], list[str] | None] = {}
    for where, cfg in llm_sections(config):
        if network:
            problems += check_endpoint(where, cfg, listed)
    return problems
