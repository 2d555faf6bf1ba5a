"""Reports of a run or a model for compliance teams: Markdown, JSON, CSV and a chart."""
