"""HTML for the pages: Jinja2 templates (autoescaped) and markdown with raw HTML disabled."""
from __future__ import annotations

import threading
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

#: No script, no external resource: inline styles and the inline SVG charts only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

_env = Environment(loader=PackageLoader("cds.pages", "templates"),
                   autoescape=select_autoescape(default=True, default_for_string=True),
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_md_lock = threading.Lock()
_md: Any = None


def markdown_html(text: str) -> Markup:
    """CommonMark to HTML; raw HTML in the text is escaped, unsafe link schemes refused."""
    global _md
    with _md_lock:
        if _md is None:
            from markdown_it import MarkdownIt
            _md = MarkdownIt("commonmark", {"html": False, "linkify": False})
    return Markup(_md.render(text))


def render_page(template: str, **context: Any) -> str:
    return _env.get_template(template).render(csp=CSP, **{"csp_meta": False, **context})
