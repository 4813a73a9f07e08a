"""The domain data module: raw schema, generator and feature computation for card-fraud scoring.

A user with other data replaces this package and ``feature_repo/``; flows, registry code and services stay.
"""
