"""Evaluation: metrics, protocols as data, tiled full-resolution inference, baselines, the evaluate and report
stages (cli.py, report.py)."""
