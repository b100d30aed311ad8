"""Records (pydantic) and the tables (Arrow schemas) they define."""

from synthvg.schemas.arrow import schema_of, to_table
from synthvg.schemas.records import (
    CATEGORIES,
    RLE,
    Box,
    DepthMapRecord,
    DescriptionRecord,
    EditRecord,
    ErrorRecord,
    ImageRecord,
    ProposalRecord,
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

#: Physical tables: name -> the record model that defines its schema.
TABLES = {
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
    "to_table",
]
