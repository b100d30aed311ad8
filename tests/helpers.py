"""Helpers the tests share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from synthvg.schemas import ImageRecord, to_table
from synthvg.schemas.config import BuildConfig, load_config

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
TINYCOCO = REPO / "data" / "tinycoco"


def demo_config(out: Path, **overrides) -> BuildConfig:
    """The demo config, written to ``out``; overrides are top-level keys or nested dicts."""
    cfg = load_config(DEMO_CONFIG, out=str(out))
    data = cfg.model_dump()
    for key, value in overrides.items():
        if isinstance(value, dict) and value.get("backend", data[key].get("backend")) == data[
            key
        ].get("backend"):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return BuildConfig.model_validate(data)


VOLATILE = {"run_id", "created_at"}


def table_rows(root: str, table: str) -> list[tuple]:
    """A table's rows as sorted tuples, without the columns that differ between runs."""
    from synthvg.storage import connect

    con = connect(root)
    cols = [c for c in con.sql(f"SELECT * FROM {table} LIMIT 0").columns if c not in VOLATILE]
    rows = con.sql(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
    return sorted(rows, key=repr)


def dataset_rows(root: str) -> dict[str, list[tuple]]:
    return {
        t: table_rows(root, t) for t in ("images", "regions", "proposals", "relations", "errors")
    }


def _teacher_for_verifiers(request: dict) -> str:
    """A fake teacher answer: per subject one interactional relation (for a VQA verifier) and one
    spatial one (for the rules)."""
    import json
    import re

    from synthvg.llm.testing import last_user_text

    ids = [int(m) for m in re.findall(r"^(\d+): ", last_user_text(request), re.M)][:5]
    subjects = [
        {
            "subject_id": s,
            "description": f"thing {s}",
            "interactional": [{"object_id": o, "predicate": "holding"}],
            "spatial": [{"object_id": o, "predicate": "left of"}],
            "functional": [],
            "social": [],
            "emotional": [],
        }
        for s, o in zip(ids, ids[1:] + ids[:1], strict=True)
    ]
    return json.dumps({"subjects": subjects})


def build_with_verifier(out: Path, verifier: dict, monkeypatch) -> tuple[BuildConfig, list[tuple]]:
    """A two-image demo build whose (fake, local) OpenAI teacher writes relations that
    ``verifier`` judges; returns the config and the teacher's interactional relations as
    (verdict, verdict_score, verified_by, verdict_reason)."""
    from synthvg.llm.testing import FakeOpenAIServer
    from synthvg.pipeline import run_build
    from synthvg.storage import connect

    monkeypatch.setenv("SYNTHVG_TEST_KEY", "sk-test")
    with FakeOpenAIServer(responder=_teacher_for_verifiers) as server:
        cfg = demo_config(
            out,
            limit=2,
            shard_size=2,
            teacher={
                "backend": "openai",
                "model": "m",
                "base_url": server.base_url,
                "api_key_env": "SYNTHVG_TEST_KEY",
            },
            filters={"backend": "rules", "verifiers": [verifier]},
        )
        run = run_build(cfg)
    assert run.status == "completed"
    rows = (
        connect(cfg.out)
        .sql(
            "SELECT verdict, verdict_score, verified_by, verdict_reason FROM relations "
            "WHERE stage = 'teacher' AND category = 'interactional'"
        )
        .fetchall()
    )
    return cfg, rows


def save_tiny_sam(path: Path) -> None:
    """A random 2-layer SAM (256 px) with its processor, saved as a checkpoint folder."""
    import torch
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(0)
    sam = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=256,
            patch_size=16,
            output_channels=32,
            mlp_dim=64,
            global_attn_indexes=[1],
            window_size=4,
            num_pos_feats=16,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=32, image_size=256, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=64,
            iou_head_hidden_dim=32,
        ),
    )
    SamModel(sam).save_pretrained(path)
    SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": 256}, pad_size={"height": 256, "width": 256}
        )
    ).save_pretrained(path)


def image_table(*ids: str):
    """An ``images`` table of tiny 4x3 COCO images with these ids (storage tests' rows)."""
    return to_table(
        ImageRecord,
        [
            ImageRecord(
                image_id=i,
                sources=["coco"],
                file_uri=f"/x/{i}.jpg",
                width=4,
                height=3,
                content_hash="h",
            )
            for i in ids
        ],
    )
