"""mskcds: CDS Hooks 2.0 decision support for bone and muscle health.

``ls cds/`` is the request's path: hooks (wire) → fhir (gather, normalize) → clinical
(evaluate) → cards, met in engine.py; http/ serves it, security/ guards it, store/ keeps
what must outlive a request, knowledge/ loads rules/, cli/ is the command line.
"""
from typing import Any

__all__ = ["create_app"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a lower layer (e.g. cds.clinical) does not import Flask.
    if name == "create_app":
        from cds.http.app import create_app
        return create_app
    raise AttributeError(name)
