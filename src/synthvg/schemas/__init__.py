"""Records (pydantic) and the tables (Arrow schemas) they define."""

from typing import TYPE_CHECKING

from synthvg.lazy import lazy_getattr
from synthvg.schemas.records import (
    CATEGORIES,
    RLE,
    Box,
    DepthMapRecord,
    DescriptionRecord,
    EditRecord,
    ErrorRecord,
    GenerationRecord,
    ImageRecord,
    ProposalRecord,
    Record,
    RegionCheckRecord,
    RegionDepthRecord,
    RegionRecord,
    RegionSource,
    RelationRecord,
    RelationVerdictRecord,
    RunManifest,
    ShardFile,
    ShardManifest,
    StageSummary,
)

# The Arrow names resolve on first use (PEP 562): the records alone do not need pyarrow, so
# `synthvg show` (masks and boxes) does not pay for it.
_EXPORTS = {
    "schema_of": "synthvg.schemas.arrow",
    "table_from_columns": "synthvg.schemas.arrow",
    "to_table": "synthvg.schemas.arrow",
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers (tests/test_lazy_exports.py)
    from synthvg.schemas.arrow import schema_of, table_from_columns, to_table

__getattr__ = lazy_getattr(__name__, _EXPORTS)

#: Physical tables: name -> the record model that defines its schema.
TABLES: dict[str, type[Record]] = {
    "images": ImageRecord,
    "regions": RegionRecord,
    "proposals": ProposalRecord,
    "region_checks": RegionCheckRecord,
    "region_depth": RegionDepthRecord,
    "depth_maps": DepthMapRecord,
    "relations": RelationRecord,
    "descriptions": DescriptionRecord,
    "relation_verdicts": RelationVerdictRecord,
    "edits": EditRecord,
    "generations": GenerationRecord,
    "errors": ErrorRecord,
}

__all__ = [
    "CATEGORIES",
    "RLE",
    "TABLES",
    "Box",
    "DepthMapRecord",
    "DescriptionRecord",
    "EditRecord",
    "ErrorRecord",
    "GenerationRecord",
    "ImageRecord",
    "ProposalRecord",
    "RegionCheckRecord",
    "RegionDepthRecord",
    "RegionRecord",
    "RegionSource",
    "RelationRecord",
    "RelationVerdictRecord",
    "RunManifest",
    "ShardFile",
    "ShardManifest",
    "StageSummary",
    "schema_of",
    "table_from_columns",
    "to_table",
]
