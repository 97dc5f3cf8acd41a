"""rules/citations.yaml: the guidelines every threshold and card cites."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from marshmallow import fields, post_load, validate

from cds.knowledge.loader import NAME, Strict

FILE = "citations.yaml"


@dataclass(frozen=True)
class Citation:
    label: str
    title: str
    authors: str
    journal: str
    year: int
    url: str
    evidence: str
    doi: str | None = None


@dataclass(frozen=True)
class CitationRef:
    """``{id, where}`` beside a number in a rules file: which guideline, which table or line."""

    id: str
    where: str


class CitationRefSchema(Strict):
    id = fields.String(required=True, validate=validate.Length(min=1))
    where = fields.String(required=True, validate=validate.Length(min=3))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> CitationRef:
        return CitationRef(data["id"], data["where"].strip())


class CitationSchema(Strict):
    label = fields.String(required=True, validate=validate.Length(min=3, max=120))
    title = fields.String(required=True, validate=validate.Length(min=3))
    authors = fields.String(required=True)
    journal = fields.String(required=True)
    year = fields.Integer(required=True, strict=True, validate=validate.Range(min=1900, max=2100))
    doi = fields.String(validate=validate.Regexp(r"^10\.\d{4,9}/\S+$", error="not a DOI (10.xxxx/...)"))
    url = fields.Url(required=True, schemes={"https", "http"})
    evidence = fields.String(required=True, validate=validate.Length(min=3))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Citation:
        return Citation(**data)


class CitationsFileSchema(Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    citations = fields.Dict(keys=fields.String(validate=NAME),
                            values=fields.Nested(CitationSchema), required=True,
                            validate=validate.Length(min=1))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Mapping[str, Citation]:
        return dict(data["citations"])
