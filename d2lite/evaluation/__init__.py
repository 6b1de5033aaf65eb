"""Evaluation: dataset evaluators (COCO box AP) and the inference loop."""

from .coco_evaluation import COCOEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset
from .testing import flatten_results_dict, print_csv_format, verify_results

__all__ = [
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "inference_context",
    "inference_on_dataset",
    "print_csv_format",
    "verify_results",
    "flatten_results_dict",
]
