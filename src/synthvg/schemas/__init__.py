"""Records (pydantic) and the tables (Arrow schemas) they define."""

from typing import TYPE_CHECKING

from synthvg.lazy import lazy_getattr

# Every name resolves on first use (PEP 562): `synthvg show` draws masks and boxes without
# building the record models (~0.1 s of pydantic's model machinery) or importing pyarrow.
_EXPORTS = {
    "CATEGORIES": "synthvg.schemas.vocabulary",
    "RLE": "synthvg.schemas.records",
    "Box": "synthvg.schemas.records",
    "DepthMapRecord": "synthvg.schemas.records",
    "DescriptionRecord": "synthvg.schemas.records",
    "EditRecord": "synthvg.schemas.records",
    "ErrorRecord": "synthvg.schemas.records",
    "GenerationRecord": "synthvg.schemas.records",
    "ImageRecord": "synthvg.schemas.records",
    "ProposalRecord": "synthvg.schemas.records",
    "RegionCheckRecord": "synthvg.schemas.records",
    "RegionDepthRecord": "synthvg.schemas.records",
    "RegionRecord": "synthvg.schemas.records",
    "RegionSource": "synthvg.schemas.records",
    "RelationRecord": "synthvg.schemas.records",
    "RelationVerdictRecord": "synthvg.schemas.records",
    "RunManifest": "synthvg.schemas.records",
    "ShardFile": "synthvg.schemas.records",
    "ShardManifest": "synthvg.schemas.records",
    "StageSummary": "synthvg.schemas.records",
    "TABLES": "synthvg.schemas.records",
    "schema_of": "synthvg.schemas.arrow",
    "table_from_columns": "synthvg.schemas.arrow",
    "to_table": "synthvg.schemas.arrow",
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers (tests/test_lazy_exports.py)
    from synthvg.schemas.arrow import schema_of, table_from_columns, to_table
    from synthvg.schemas.records import (
        RLE,
        TABLES,
        Box,
        DepthMapRecord,
        DescriptionRecord,
        EditRecord,
        ErrorRecord,
        GenerationRecord,
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
    from synthvg.schemas.vocabulary import CATEGORIES

__getattr__ = lazy_getattr(__name__, _EXPORTS)

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
