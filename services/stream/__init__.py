"""Transactions as a stream: the event format, publishing, and the processes that consume it."""
