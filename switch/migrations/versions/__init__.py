"""Alembic revisions of the store, oldest first (see switch/migrations)."""
