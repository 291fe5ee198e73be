"""Evaluation: detection AP, depth error, MOT metrics, replay, reports."""
