"""MkDocs hooks for the documentation site (mkdocs.yml loads this file).

The Markdown under docs/ is written to be read on a code host as well as on the site, so:

* Headings get GitHub's anchors (lower case, punctuation dropped, each space a hyphen, nothing
  collapsed, non-ASCII letters kept): the specification's links such as
  ``vectors.md#57-loginjson--keysmd--4`` or ``sealed-and-attachments.md#3-padding-padmé`` work in
  both places, and mkdocs --strict checks every one of them.
* A relative link to a file of the repository outside docs/ (``../deploy/nginx.conf``) or to a
  directory (``vectors/``) cannot be a page of the site: it becomes the repository path in code.
  A link to a path that does not exist is left alone, so --strict still reports it.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

_LINK = re.compile(r"(?<!!)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^()\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def github_slug(value: str, separator: str = "-") -> str:
    """The anchor GitHub gives a heading whose text is ``value``."""
    kept = (ch for ch in value.strip().lower() if ch in " -_" or unicodedata.category(ch)[0] in "LNM")
    return "".join(kept).replace(" ", separator)


def on_config(config: Any, **kwargs: Any) -> Any:
    config["mdx_configs"].setdefault("toc", {})["slugify"] = github_slug
    return config


def _rewrite_links(markdown: str, page_dir: Path, docs_dir: Path, root: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        path = (page_dir / target.split("#", 1)[0]).resolve()
        inside = path == docs_dir or docs_dir in path.parents
        if not path.exists() or (inside and path.is_file()):
            return match.group(0)
        shown = path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
        return f"`{shown}`"

    out: list[str] = []
    fenced = False
    for line in markdown.split("\n"):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(replace, line))
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    src = page.file.abs_src_path
    if src is None:
        return markdown
    return _rewrite_links(markdown, Path(src).resolve().parent, docs_dir, root)
