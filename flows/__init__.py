"""Prefect flows of campaignops."""
