"""Evaluation: scene-graph generation recall as OpenPSG computes it (see docs/EVALUATION.md)."""

from synthvg.eval.inputs import EvalInputError, load_ground_truth, read_prediction_file, read_stage
from synthvg.eval.run import SggReport, evaluate_sgg, format_table, parse_pred, write_results
from synthvg.eval.sgg import ImagePrediction, ImageTruth, SggScores, box_iou_mmdet, evaluate
from synthvg.eval.vocab import LabelMapper, Vocabulary

__all__ = [
    "EvalInputError",
    "ImagePrediction",
    "ImageTruth",
    "LabelMapper",
    "SggReport",
    "SggScores",
    "Vocabulary",
    "box_iou_mmdet",
    "evaluate",
    "evaluate_sgg",
    "format_table",
    "load_ground_truth",
    "parse_pred",
    "read_prediction_file",
    "read_stage",
    "write_results",
]
