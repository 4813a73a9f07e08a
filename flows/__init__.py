"""Prefect flows of the platform, one per file, named after the flow they define."""
