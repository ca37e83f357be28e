"""A griffe extension for the API reference (mkdocs.yml loads it): Saltline's docstrings are written
in reStructuredText habits, which mkdocstrings renders as Markdown. This rewrites, before rendering:

* Sphinx cross-reference roles (``:class:`Client```, ``:meth:`~saltline.x.Y.z```, ``:mod:`...```,
  ``:func:``, ``:attr:``, ``:data:``, ``:exc:``, ``:obj:``, ``:const:``) into autorefs links. A target
  is resolved the way Sphinx does: as written, then from the object outwards (its class, its module,
  the packages above), then under ``saltline.``. A target that resolves becomes a link where the
  object is rendered on some page (plain code elsewhere); a target that names a module of ours but
  no object is a **warning**, which fails ``mkdocs build --strict`` (tests/test_docs_build.py), so a
  renamed or misspelt reference is caught. Targets in the standard library or a dependency are
  shown as code.
* reST literal-block markers: a paragraph ending in ``::`` before an indented block ends in ``:``
  (a lone ``::`` line disappears); the indented block is a Markdown code block either way.

Only the rendered text changes; the source docstrings stay as they are.
"""

from __future__ import annotations

import builtins
import re
import sys
from typing import Any

import griffe

ROLES = ("class", "meth", "mod", "func", "attr", "data", "exc", "obj", "const")
_ROLE = re.compile(r":(?:py:)?(" + "|".join(ROLES) + r"):`([^`]+)`")
#: the packages our docstrings reference besides the standard library
EXTERNAL = frozenset({"nacl", "httpx", "websockets", "typer", "rich", "segno", "sqlite3", "pytest"})
OURS = frozenset({"saltline", "crypto", "client_sdk", "server"})

log = griffe.logger


def _lookup(collection: griffe.ModulesCollection, path: str) -> griffe.Object | griffe.Alias | None:
    try:
        found = collection[path]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return found if isinstance(found, griffe.Object | griffe.Alias) else None


def _canonical(found: griffe.Object | griffe.Alias) -> str | None:
    if isinstance(found, griffe.Alias):
        try:
            return found.final_target.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None  # an alias of something outside the package (e.g. a stdlib name)
    return found.path


def resolve(obj: griffe.Object, target: str, index: dict[str, list[str]]) -> tuple[str | None, bool]:
    """``(canonical path or None, known)``: ``known`` is False for a target that should be ours but is not.
    ``index`` maps each dotted tail of a documented object's path (``Client.events``, ``events``) to
    the paths that end with it: an unqualified name that is not in scope resolves when it is unique."""
    collection = obj.modules_collection
    candidates: list[str] = []
    if target.startswith("saltline."):
        candidates.append(target)
    scope: griffe.Object | None = obj
    while scope is not None:  # the object itself (its methods), then outwards
        candidates.append(f"{scope.path}.{target}")
        scope = scope.parent
    candidates += [target, f"saltline.{target}"]
    for path in candidates:
        found = _lookup(collection, path)
        if found is not None:
            # None: an alias of an external object (shown as code, not a link)
            return _canonical(found), True
    if len(index.get(target, ())) == 1:
        return index[target][0], True
    head = target.split(".")[0]
    external = head in sys.stdlib_module_names or head in EXTERNAL or hasattr(builtins, head)
    known = external or ("." in target and head not in OURS and not head[:1].isupper())
    return None, known


def _shown(role: str, target: str) -> str:
    text = target.split(".")[-1] if target.startswith("~") else target
    text = text.lstrip("~.")
    if role in ("meth", "func") and not text.endswith(")"):
        text += "()"
    return text


def _literal_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line.rstrip().endswith("::") and not following.strip():
            stripped = line.rstrip()[:-2].rstrip()
            if not stripped:
                continue  # a lone "::": the block after it is a code block already
            line = stripped + ":"
        out.append(line)
    return "\n".join(out)


def rewrite(obj: griffe.Object, text: str, index: dict[str, list[str]]) -> str:
    def replace(match: re.Match[str]) -> str:
        role, raw = match.group(1), match.group(2).strip()
        target = raw.lstrip("~").rstrip("()").lstrip(".")
        shown = _shown(role, raw)
        path, known = resolve(obj, target, index)
        if path is None:
            if not known:
                where = f"{obj.relative_filepath}:{obj.lineno}" if obj.lineno else obj.path
                many = index.get(target, [])
                why = f"ambiguous: {', '.join(many)}" if many else "unresolved"
                log.warning(
                    "%s: %s cross-reference :%s:`%s` in the docstring of %s", where, why, role, raw, obj.path
                )
            return f"`{shown}`"
        return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'

    return _ROLE.sub(replace, _literal_blocks(text))


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the documented subpackages (members, not aliases) once."""

    def __init__(self, packages: tuple[str, ...] = ("saltline.client_sdk", "saltline.crypto")) -> None:
        super().__init__()
        self.packages = packages

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        roots = [
            sub
            for path in self.packages
            if (path == pkg.path or path.startswith(pkg.path + "."))
            and isinstance(sub := _lookup(loader.modules_collection, path), griffe.Module)
        ]
        objects: list[griffe.Object] = []
        for root in roots:
            _collect(root, objects)
        index: dict[str, list[str]] = {}
        for obj in objects:
            parts = obj.path.split(".")
            for i in range(1, len(parts)):
                index.setdefault(".".join(parts[i:]), []).append(obj.path)
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj, obj.docstring.value, index)


def _collect(obj: griffe.Object, out: list[griffe.Object]) -> None:
    out.append(obj)
    for member in obj.members.values():
        if not member.is_alias and isinstance(member, griffe.Object):
            _collect(member, out)
