"""Payload contracts and the database schema: the single source of truth for columns."""
