"""The data path into Feast: raw files ingested and validated, the partitioned offline store, the online store."""
