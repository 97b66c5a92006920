"""campaignops: zero-defect campaign operations on Prefect."""

__version__ = "0.1.0"
