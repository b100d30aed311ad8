"""The explorer's settings, and the rule that keeps it private: loopback, or a token."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, Field, SecretStr

#: Host names that mean this machine only.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class ExplorerConfig(BaseModel):
    """What ``synthvg serve`` serves, where, and the limits of what a visitor may ask."""

    root: str = Field(description="dataset root: a folder or an object-store URL")
    as_of: int | None = Field(
        None, ge=0, description="serve this dataset version (default: the latest at start)"
    )
    host: str = Field(
        "127.0.0.1", description="address to bind; beyond loopback a token is required"
    )
    port: int = Field(8765, ge=0, le=65535)
    token: SecretStr | None = Field(
        None, description="required on every request when set (a ?token= query once, then a cookie)"
    )
    page_size: int = Field(48, ge=1, le=500, description="thumbnails per gallery page")
    sql_row_cap: int = Field(1000, ge=1, le=1_000_000, description="rows a SQL page shows")
    csv_row_cap: int = Field(100_000, ge=1, description="rows a CSV download holds")
    sql_timeout_s: float = Field(
        10.0, gt=0, description="a visitor's query is cancelled after this"
    )
    memory_limit: str | None = Field("2GB", description="DuckDB memory_limit of the server")
    threads: int | None = Field(None, ge=1, description="DuckDB threads (default: all cores)")
    connections: int = Field(4, ge=1, le=32, description="DuckDB cursors the server holds")
    prefect_ui_url: str | None = Field(
        None,
        description="the Prefect UI (e.g. http://127.0.0.1:4200): links runs to their flow runs",
    )


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(config: ExplorerConfig) -> None:
    """Refuse to serve beyond this machine without a token (one line, says what to do)."""
    if not is_loopback(config.host) and not (config.token and config.token.get_secret_value()):
        raise PermissionError(
            f"refusing to serve on {config.host}: beyond 127.0.0.1 the explorer needs a token "
            "(--token T or SYNTHVG_EXPLORER_TOKEN); visitors open the URL once with ?token=T"
        )
