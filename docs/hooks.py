"""MkDocs hook: the docstrings' Sphinx roles (:func:`x`, :class:`X`...) shown as plain code in the
API reference, as mkdocstrings renders the backticked name but leaves the role's prefix."""
import re

SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(<code>)")


def on_page_content(html, **kwargs):
    return SPHINX_ROLE.sub(r"\1", html)
