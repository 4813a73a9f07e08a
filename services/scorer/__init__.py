"""The real-time scorer: one transaction in, a fraud probability and a decision out."""
