"""
Sphinx configuration for txfastcgi's documentation.

Build it with ``python -m sphinx -W -b html docs docs/_build/html``; it needs
no network. tests/test_docs.py runs the same build.
"""

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(DOCS)
# The checkout's txfastcgi, not an installed one, and the local extension.
sys.path[:0] = [REPOSITORY, os.path.join(DOCS, "_ext")]

from txfastcgi import __version__  # noqa: E402

project = "txfastcgi"
author = "txfastcgi developers"
copyright = "txfastcgi developers"
release = __version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "txfastcgi_sphinx",
]

exclude_patterns = ["_build", "_inventories", "_ext", "examples"]
# docs/security.rst includes SECURITY.rst from the top of the repository;
# until that file exists the page is left out rather than failing the build.
if not os.path.exists(os.path.join(REPOSITORY, "SECURITY.rst")):
    exclude_patterns.append("security.rst")

# Twisted's API documentation. The build runs offline (CI reaches only package
# registries), so the inventory is the one shipped in _inventories/, made by
# pydoctor from the installed Twisted (see _inventories/update_twisted.py);
# the links point at the published pages. TXFASTCGI_DOCS_ONLINE=1 downloads
# the published inventory instead.
TWISTED_API = "https://docs.twisted.org/en/stable/api/"
_twistedInventory = (
    None
    if os.environ.get("TXFASTCGI_DOCS_ONLINE")
    else os.path.join(DOCS, "_inventories", "twisted.inv")
)
intersphinx_mapping = {"twisted": (TWISTED_API, _twistedInventory)}

autodoc_member_order = "bysource"
# Twisted's own docstrings (of render, say) are epytext of another style.
autodoc_inherit_docstrings = False
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"show-inheritance": True}

html_theme = "alabaster"
html_title = f"txfastcgi {release}"
html_theme_options = {
    "description": "Serve PHP applications from Twisted through php-fpm",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []
