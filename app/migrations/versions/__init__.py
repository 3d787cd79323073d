"""Alembic revision scripts; ``app db revision`` writes new ones here."""
