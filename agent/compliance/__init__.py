"""Regulatory thresholds, model lineage and scopes, forecasts, evaluation, the watcher, the
planner and rule generation.
"""
