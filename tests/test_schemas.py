"""Records define the tables: the Arrow schemas follow the pydantic models exactly."""

from __future__ import annotations

import pyarrow as pa
import pytest
from helpers import DEMO_CONFIG

from synthvg.schemas import (
    TABLES,
    Box,
    RegionRecord,
    RegionSource,
    RelationRecord,
    schema_of,
    to_table,
)
from synthvg.schemas.arrow import from_table
from synthvg.schemas.config import ConfigError, load_config
from synthvg.schemas.records import relation_id


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_field_is_a_column(name):
    model = TABLES[name]
    schema = schema_of(model)
    assert schema.names == list(model.model_fields)


def test_nested_and_nullable_types():
    schema = schema_of(RegionRecord)
    assert schema.field("bbox").type == pa.struct(
        [pa.field(n, pa.float64(), nullable=False) for n in ("x1", "y1", "x2", "y2")]
    )
    assert schema.field("mask").nullable
    assert not schema.field("image_id").nullable
    assert schema.field("sources").type.value_type.get_field_index("dataset") == 0
    assert schema.field("descriptions").type == pa.list_(pa.string())


def test_records_round_trip_through_arrow():
    r = RegionRecord(
        image_id="coco:1",
        region_id=3,
        bbox=Box(x1=1, y1=2, x2=3, y2=4),
        area=4.0,
        label="dog",
        descriptions=["a dog"],
        sources=[RegionSource(dataset="coco", annotation_id="7", category="dog")],
    )
    table = to_table(RegionRecord, [r])
    assert table.schema.equals(schema_of(RegionRecord))
    assert from_table(RegionRecord, table) == [r]
    assert to_table(RegionRecord, []).num_rows == 0


def test_relation_ids_are_stable_and_distinct():
    a = relation_id("coco:1", "teacher", 1, 2, "left of")
    assert a == relation_id("coco:1", "teacher", 1, 2, "left of")
    assert a != relation_id("coco:1", "teacher", 2, 1, "left of")
    assert a != relation_id("coco:1", "robin", 1, 2, "left of")


def test_relation_rejects_unknown_category():
    with pytest.raises(ValueError):
        RelationRecord(
            relation_id="x",
            image_id="i",
            subject_id=0,
            object_id=1,
            predicate="p",
            predicate_raw="p",
            category="magic",
            stage="teacher",
            generator="rules",
            model="m",
            run_id="r",
        )


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_config_unknown_key_is_named(tmp_path):
    p = _write(
        tmp_path,
        "out: x\nseeds: {sources: [{annotations: a.json, images: i}]}\nregions: {iou_treshold: 0.5}\n",
    )
    with pytest.raises(ConfigError, match=r"regions\.iou_treshold: unknown key"):
        load_config(p)


def test_config_bad_value_is_named(tmp_path):
    p = _write(
        tmp_path,
        "out: x\nseeds: {sources: [{annotations: a.json, images: i}]}\nregions: {iou_threshold: 2}\n",
    )
    with pytest.raises(ConfigError, match=r"regions\.iou_threshold"):
        load_config(p)


def test_config_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "out: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_config_paths_resolve_against_the_file():
    cfg = load_config(DEMO_CONFIG)
    src = cfg.seeds.sources[0]
    assert src.annotations.endswith("data/tinycoco/annotations/instances_train2017.json")
    assert src.annotations.startswith("/")
    assert cfg.out.endswith("build/demo")
