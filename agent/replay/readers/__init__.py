"""Readers of recorded telemetry: each streams a file into column chunks and names its bad rows."""
