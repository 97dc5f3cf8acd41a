"""Persistence: the database engine, issued-card records, feedback, reports, migrations."""
