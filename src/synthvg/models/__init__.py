"""Model backends behind the stages. Each loads once per worker (see stages.base.load_stage)."""
