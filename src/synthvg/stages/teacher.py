"""Teacher: names subjects and their relations for each image.

The backend here is the weight-free rule teacher (spatial relations from geometry). The
GPT-4V-class backend plugs in behind the same stage: it writes the same ``relations`` rows with
``stage='teacher'``, only with ``generator='model'`` and its model and prompt version.
"""

from __future__ import annotations

from synthvg.models.rule_teacher import RegionGeom, RuleTeacher
from synthvg.schemas import Box, RelationRecord
from synthvg.schemas.config import BuildConfig
from synthvg.schemas.records import relation_id
from synthvg.stages.base import RunContext, ShardSpec, Stage, StageInputs, StageOutput
from synthvg.stages.regions import region_mask


def regions_for_later_stages(inputs: StageInputs, config: BuildConfig) -> dict[str, list[dict]]:
    """Regions per image that later stages see: kept ones, or all (``regions.feed``).

    When the regions stage did not run there are no checks, and every region is used.
    """
    checks = {(c["image_id"], c["region_id"]): c["kept"] for c in inputs.rows("region_checks")}
    use_all = config.regions.feed == "all" or not checks
    out: dict[str, list[dict]] = {}
    for r in inputs.rows("regions"):
        if use_all or checks.get((r["image_id"], r["region_id"]), False):
            out.setdefault(r["image_id"], []).append(r)
    return out


class TeacherStage(Stage):
    name = "teacher"
    version = "1"
    writes = ("relations",)

    @classmethod
    def skip_reason(cls, config: BuildConfig) -> str | None:
        if config.teacher.backend == "none":
            return "no teacher backend configured (teacher.backend: none)"
        return None

    def __init__(self, config: BuildConfig):
        super().__init__(config)
        self.teacher = RuleTeacher(config.teacher.rules)

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        # The regions' feed policy changes what the teacher sees.
        return {**super().fingerprint_payload(config), "feed": config.regions.feed}

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        out = StageOutput()
        regions = regions_for_later_stages(inputs, self.config)
        for image in inputs.rows("images"):
            image_id = image["image_id"]
            geoms = [
                RegionGeom(
                    region_id=r["region_id"],
                    box=Box(**r["bbox"]),
                    mask=region_mask(r, image["height"], image["width"]),
                    area=r["area"],
                )
                for r in regions.get(image_id, [])
            ]
            for t in self.teacher.relate(geoms):
                out.add(
                    "relations",
                    RelationRecord(
                        relation_id=relation_id(image_id, "teacher", t.subject_id, t.object_id, t.predicate),
                        image_id=image_id,
                        subject_id=t.subject_id,
                        object_id=t.object_id,
                        predicate=t.predicate,
                        predicate_raw=t.predicate,
                        category="spatial",
                        stage="teacher",
                        generator="rules",
                        score=t.score,
                        model=self.teacher.name,
                        prompt_version=self.teacher.version,
                        run_id=ctx.run_id,
                    ),
                )
        return out
