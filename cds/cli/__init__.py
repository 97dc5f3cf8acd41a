"""The ``mskcds`` command line."""
