"""mskcds: CDS Hooks 2.0 decision support for bone and muscle health."""
from .app import create_app

__all__ = ["create_app"]
__version__ = "0.1.0"
