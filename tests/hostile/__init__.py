"""Hostile input: every bad input and fault ends in an exit code and one clear message,
with nothing created or changed. One ``cases_<area>.py`` module per area."""
