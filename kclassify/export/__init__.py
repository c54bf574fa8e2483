"""TFLite export: conversion (one table of modes), calibration, and the accuracy report."""
from kclassify.export.report import export_tflite  # noqa: F401
