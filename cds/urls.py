"""Base URLs, compared and joined one way: without trailing slashes.

``https://ehr.example/fhir/`` and ``https://ehr.example/fhir`` name the same base
(a FHIR server, this service's public URL, a JWT ``aud``); every place that compares
or joins base URLs goes through ``base_url``.
"""
from __future__ import annotations


def base_url(url: str) -> str:
    """``url`` without its trailing slashes."""
    return url.rstrip("/")


def same_base(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the same URL once trailing slashes are dropped."""
    return base_url(a) == base_url(b)
