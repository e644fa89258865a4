"""
Sphinx helpers for txfastcgi's documentation.

- Docstrings are written in Twisted's epytext style (C{code}, L{link},
  @param): L{epytextToReST} turns them into reStructuredText for autodoc.
- C{.. command-options:: txfastcgi.tap.Options} renders every option of a
  L{twisted.python.usage.Options} class as Sphinx C{option} entries, so the
  reference cannot drift from the code: its content may only add prose to
  options that exist.
- C{.. towncrier-draft::} renders the news fragments not yet released.
- C{.. optional-toctree::} and C{:maybe-doc:} link pages that other work may
  not have added yet without breaking the build.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.directives.other import TocTree
from sphinx.ext import intersphinx
from sphinx.util import docname_join
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import split_explicit_title

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Epytext markup: C{code}, L{target} or L{label <target>}, I{italic}, B{bold}.
_INLINE = re.compile(r"([CLIB])\{([^{}]*)\}")
_FIELD = re.compile(
    r"^(\s*)@(param|type|return|returns|rtype|raise|raises|ivar|cvar|var|see|note|since)\b"
)
_FIELD_NAMES = {"return": "returns", "raise": "raises"}
_LITERALS = {"None", "True", "False"}


def _inlineReplacement(match: re.Match[str]) -> str:
    kind, text = match.group(1), " ".join(match.group(2).split())
    if kind == "C" or (kind == "L" and text in _LITERALS):
        markup = f"``{text}``"
    elif kind == "L":
        markup = f":py:obj:`{text}`"
    elif kind == "I":
        markup = f"*{text}*"
    else:
        markup = f"**{text}**"
    # reStructuredText inline markup must not touch a letter or a digit.
    before = match.string[match.start() - 1 : match.start()]
    after = match.string[match.end() : match.end() + 1]
    if before.isalnum():
        markup = "\\ " + markup
    if after.isalnum():
        markup += "\\ "
    return markup


# ``; `` is fine in epytext but not in reStructuredText, whose inline
# literals cannot start or end with a space: quote such literals.
_LITERAL = re.compile(r"``(.+?)``")


def _quoteSpacedLiteral(match: re.Match[str]) -> str:
    text = match.group(1)
    return f'``"{text}"``' if text != text.strip() else match.group()


def epytextToReST(text: str) -> str:
    """Turn an epytext docstring into reStructuredText."""
    text = _INLINE.sub(_inlineReplacement, text)
    text = _LITERAL.sub(_quoteSpacedLiteral, text)
    lines = []
    for line in text.split("\n"):
        field = _FIELD.match(line)
        if field:
            name = _FIELD_NAMES.get(field.group(2), field.group(2))
            line = f"{field.group(1)}:{name}{line[field.end() :]}"
        lines.append(line)
    return "\n".join(lines)


def _processDocstring(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    lines[:] = epytextToReST("\n".join(lines)).split("\n")


def _resolveImportedName(
    app: Sphinx, env: Any, node: nodes.Element, contnode: nodes.TextElement
) -> nodes.Element | None:
    """
    Resolve a Python reference that names something by the name its module
    imported it under (an annotation such as C{IReactorTime} left unevaluated
    by C{from __future__ import annotations}) through its full name.
    """
    module = sys.modules.get(node.get("py:module") or "")
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or module is None or "." in target:
        return None
    imported = getattr(module, target, None)
    fullName = f"{getattr(imported, '__module__', '')}.{getattr(imported, '__name__', '')}"
    if imported is None or fullName.startswith(".") or fullName == f"{module.__name__}.{target}":
        return None
    resolved = node.deepcopy()
    resolved["reftarget"] = fullName
    found: nodes.Element | None = env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], fullName, resolved, contnode
    )
    if found is None:
        found = intersphinx.missing_reference(app, env, resolved, contnode)
    return found


def _importObject(dotted: str) -> Any:
    module, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


_DEFAULT_IN_DOC = re.compile(r"\s*\[default: ([^\]]*)\]")


class CommandOptions(SphinxDirective):
    """
    Every option of a usage.Options class, in the order the content describes
    them, then the ones it does not describe.

    The content is a list of C{--name METAVAR} lines, each followed by indented
    prose added after the option's own help. Describing an option the class
    does not have is an error.
    """

    required_arguments = 1
    has_content = True
    option_spec = {"program": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        options = _importObject(self.arguments[0])()
        program = self.options.get("program", "")
        described = self._described()
        unknown = sorted(set(described) - set(options.docs))
        if unknown:
            raise self.error(f"{self.arguments[0]} has no option {', '.join(unknown)}")
        takesValue = {name[:-1] for name in options.longOpt if name.endswith("=")}
        names = [*described, *sorted(set(options.docs) - set(described))]
        rst = [f".. program:: {program}", ""] if program else []
        for name in names:
            metavar, prose = described.get(name, ("VALUE", []))
            doc = " ".join(options.docs[name].split())
            default = _DEFAULT_IN_DOC.search(doc)
            if default:
                doc = doc[: default.start()] + doc[default.end() :]
                defaultValue: object = default.group(1)
            else:
                defaultValue = options.defaults.get(name) if name in takesValue else None
            signature = f"--{name} {metavar}" if name in takesValue else f"--{name}"
            # Escaped colons: "tcp:8080" is an endpoint, not a link.
            doc = re.sub(r"(?<=\w):(?=\S)", r"\\:", doc)
            rst += [f".. option:: {signature}", "", f"   {doc}", ""]
            if defaultValue is not None:
                rst += [f"   Default: ``{defaultValue}``", ""]
            rst += [f"   {line}" if line else "" for line in prose]
            rst.append("")
        container = nodes.container()
        self.state.nested_parse(StringList(rst, source=self.arguments[0]), 0, container)
        return container.children

    def _described(self) -> dict[str, tuple[str, list[str]]]:
        described: dict[str, tuple[str, list[str]]] = {}
        current: list[str] = []
        for line in self.content:
            if line.startswith("--"):
                name, _, metavar = line[2:].partition(" ")
                current = []
                described[name] = (metavar.strip() or "VALUE", current)
            elif described:
                current.append(line)
            elif line.strip():
                raise self.error(f"expected an option line starting with --, not {line!r}")
        return {
            name: (metavar, textwrap.dedent("\n".join(prose)).strip("\n").split("\n"))
            for name, (metavar, prose) in described.items()
        }


class TowncrierDraft(SphinxDirective):
    """The news fragments that no release has collected yet, as towncrier renders them."""

    def run(self) -> list[nodes.Node]:
        fragments = os.path.join(REPOSITORY, "newsfragments")
        if not any(not name.startswith(".") for name in os.listdir(fragments)):
            return []
        version = self.config.release
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "towncrier",
                "build",
                "--draft",
                "--config",
                os.path.join(REPOSITORY, "towncrier.toml"),
                "--dir",
                REPOSITORY,
                "--version",
                version,
                "--date",
                "unreleased",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            raise self.error(f"towncrier build --draft failed:\n{result.stderr}")
        for name in os.listdir(fragments):
            self.env.note_dependency(os.path.join(fragments, name))
        container = nodes.section()
        lines = StringList(result.stdout.splitlines(), source="newsfragments")
        self.state.nested_parse(lines, 0, container, match_titles=True)
        return container.children


class OptionalTocTree(TocTree):
    """A toctree that leaves out the entries whose page does not exist (yet)."""

    def run(self) -> list[nodes.Node]:
        self.content = StringList(
            [
                line
                for line in self.content
                if not line.strip()
                or docname_join(self.env.docname, line.strip()) in self.env.found_docs
            ]
        )
        if not any(line.strip() for line in self.content):
            return []
        return super().run()


def maybeDocRole(
    name: str,
    rawtext: str,
    text: str,
    lineno: int,
    inliner: Any,
    options: dict[str, Any] | None = None,
    content: list[str] | None = None,
) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    """C{:doc:} to a page that may not exist yet; without it, just its title."""
    env = inliner.document.settings.env
    hasTitle, title, target = split_explicit_title(text)
    if docname_join(env.docname, target) in env.found_docs:
        docRole = env.get_domain("std").role("doc")
        return docRole("std:doc", rawtext, text, lineno, inliner, options or {}, content or [])
    return [nodes.inline(rawtext, title if hasTitle else target)], []


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _processDocstring)
    app.connect("missing-reference", _resolveImportedName)
    app.add_directive("command-options", CommandOptions)
    app.add_directive("towncrier-draft", TowncrierDraft)
    app.add_directive("optional-toctree", OptionalTocTree)
    app.add_role("maybe-doc", maybeDocRole)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
