"""Lifecycle automation: the scoring model, SQL scoring, the stage history, reports (issue 16)."""
