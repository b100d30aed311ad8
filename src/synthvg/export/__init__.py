"""Dataset formats synthvg writes and reads besides its own: the released SVG format."""

from synthvg.export.svg import ExportReport, ImportReport, export_svg, import_svg

__all__ = ["ExportReport", "ImportReport", "export_svg", "import_svg"]
