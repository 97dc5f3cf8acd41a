"""Alembic migrations for the feedback store (run by ``open_store`` and ``mskcds migrate``)."""
