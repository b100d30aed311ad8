"""A scripted SG-EDIT editor for the local OpenAI-protocol server: valid and invalid edits."""

from __future__ import annotations

import json
import re

from helpers import demo_config

CAPTION = "A dense caption: several objects on a table."
KEY_ENV = "SYNTHVG_TEST_EDIT_KEY"
KEY = "sk-test-edit-0123456789abcdefghijklmnopqrstuvwxyz"
MODEL = "gpt-4o-2024-08-06"


def edit_config(root, server, limit=4, shard_size=2, **edit):
    """Rule teacher (the demo's) + the openai editor on the teacher's graphs."""
    return demo_config(
        root,
        limit=limit,
        shard_size=shard_size,
        edit={
            "backend": "openai",
            "source": "teacher",
            "model": MODEL,
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
            "timeout_seconds": 5,
            "backoff_base_seconds": 0.01,
            "prices": {MODEL: {"input": 2.5, "output": 10.0}},
            **edit,
        },
    )


def first_user_text(request: dict) -> str:
    user = next(m for m in request["messages"] if m["role"] == "user")
    return " ".join(p.get("text", "") for p in user["content"])


def graph_in(request: dict) -> dict[int, dict]:
    """The graph the edit prompt shows."""
    m = re.search(r"^(\{.*\})$", first_user_text(request), re.M)
    return {int(k): v for k, v in json.loads(m.group(1)).items()}


def scripted_editor(request: dict) -> str:
    """Captions for caption requests; for edit requests, one edit of each kind, valid or not:

    the lowest id is renamed and gets one valid add, an add to an unknown id, a self-relation,
    a removal of one of its relations (if it has one) and of a relation it does not have;
    a missing object (999) is renamed; the highest id is the ``same as`` the second highest;
    a single-object graph gets an answer that is not JSON (the image fails, nothing written).
    """
    if "Scene graph" not in first_user_text(request):
        return CAPTION
    graph = graph_in(request)
    ids = sorted(graph)
    if len(ids) == 1:
        return "I cannot answer that."
    a, b = ids[0], ids[1]
    rel = graph[a]["rel"]
    remove = [{"rel": "flying over", "obj_ids": [b]}]
    if rel:
        p, targets = sorted(rel.items())[0]
        remove.append({"rel": p, "obj_ids": [targets[0]]})
    edits = [
        {
            "obj_id": a,
            "name": f"edited object {a}, red",
            "remove": remove,
            "add": [{"rel": "Looking AT", "obj_ids": [b, 999]}, {"rel": "holding", "obj_ids": [a]}],
        },
        {"obj_id": 999, "name": "ghost", "add": [], "remove": []},
        {"obj_id": b, "name": graph[b]["name"], "add": [], "remove": []},
    ]
    if len(ids) >= 3:
        edits.append(
            {
                "obj_id": ids[-2],
                "name": "",
                "add": [{"rel": "same as", "obj_ids": [ids[-1]]}],
                "remove": [],
            }
        )
    return json.dumps({"edit": edits})
