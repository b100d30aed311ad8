"""What a build and an import both name a run by: its id, the plan file it leaves in the root,
and the hash that fingerprints settings. Kept apart from :mod:`synthvg.pipeline` and the stages
so that ``synthvg import`` does not load every stage and config model (0.28 s) to use them."""

from __future__ import annotations

import hashlib
import json
import uuid

from synthvg.storage.dataset import utcnow

#: The plan a build or import leaves in the root: which images each shard holds.
PLAN_FILE = "plan.json"


def new_run_id() -> str:
    return utcnow().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
