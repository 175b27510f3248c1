"""Database plumbing: engines, URLs, the per-database backend, the one error seam, retries,
the PostgreSQL driver path, read replicas, locks and the schema (Alembic).
"""
