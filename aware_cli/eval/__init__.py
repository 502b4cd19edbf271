"""Evaluation: ALIGN-PLOTS, gate-threshold calibration and (later) evaluation suites."""
