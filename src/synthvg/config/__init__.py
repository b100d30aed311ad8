"""Build configuration, one module per concern: :mod:`synthvg.config.build` assembles the
sections each stage owns (``config/<stage>.py``), the seed sources' (:mod:`synthvg.readers.config`)
and the executor's. Field markers (paths, speed-only settings) live in
:mod:`synthvg.config.fields`. ``synthvg.schemas.config`` re-exports every name.
"""
