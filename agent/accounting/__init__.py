"""Samples -> integer ledger records: run metadata, attribution, estimation, integration,
the accountant and its snapshots.
"""
