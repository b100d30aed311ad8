"""Prefect defaults for synthvg, applied before Prefect is imported.

With no ``PREFECT_API_URL`` Prefect starts a temporary local server; on small machines that
takes 12-22 s, close to Prefect's 20 s default, hence the longer start-up timeout. Analytics
are off (they make a DNS lookup that fails offline). Users' own settings always win.
"""

from __future__ import annotations

import os

#: The process work pool ``prefect.yaml`` deploys to (here, not in prefect_setup, so the CLI
#: can name it without importing the config schema at start-up).
WORK_POOL = "synthvg-process"

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def configure() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
