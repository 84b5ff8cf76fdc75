"""mkdocs hook: render the Sphinx cross-reference roles of the docstrings in the API reference.

The docstrings use Sphinx roles (``:func:`train```, ``:class:`~opzo_ext.feedback.Tap```), which
Markdown renders literally as ``:func:`` followed by code. This hook turns each into the code
alone, shortened to its last component for ``~name`` as Sphinx does, and links fully qualified
names to their API entry through mkdocs-autorefs (``optional``: a name that is not documented stays
plain code instead of failing the build).
"""
from __future__ import annotations

import html
import re

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj|const|py:\w+):<code>(~?)([\w.]+)(\(\))?</code>")


def _replace(match: re.Match) -> str:
    tilde, name, call = match[1], match[2], match[3] or ""
    shown = (name.rsplit(".", 1)[-1] if tilde else name) + call
    code = f"<code>{html.escape(shown)}</code>"
    if "." not in name:
        return code
    return f'<autoref identifier="{html.escape(name)}" optional>{code}</autoref>'


def on_page_content(html_text: str, **kwargs) -> str:
    return ROLE.sub(_replace, html_text)
