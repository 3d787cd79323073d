"""FastAPI + SQLAlchemy service whose database layer is composed by a DI container."""
