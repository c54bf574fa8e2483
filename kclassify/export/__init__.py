"""TFLite export: conversion (one table of modes, modes.py; the converter set-up and the
calibrated Quantizer, convert.py), calibration and held-out selection (calibration.py), the
accuracy budget's search (budget.py), diagnosis (debug.py, read-only), the accuracy report
(report.py) and the every-mode comparison (compare.py). Dependencies point one way:
report -> budget -> debug -> convert -> calibration, modes."""
from kclassify.export.report import ExportJob, copy_kit, export_tflite  # noqa: F401
