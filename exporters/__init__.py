"""Outputs of the agent: the Prometheus collector and endpoint, textfile output."""
