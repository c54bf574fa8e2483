"""TFLite export: conversion (one table of modes), calibration, diagnosis, the accuracy report
and the every-mode comparison."""
from kclassify.export.report import ExportJob, copy_kit, export_tflite  # noqa: F401
