"""The only code that talks to MLflow, and the governance store (SQLAlchemy)."""
