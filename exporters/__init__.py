"""Outputs of the agent: one Prometheus collector per concern, the endpoint (web/),
textfile output."""
