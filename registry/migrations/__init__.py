"""Alembic migrations of the governance store (run through ``registry.store``)."""
