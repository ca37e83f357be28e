"""The documentation site (mkdocs.yml): the API reference generated from the docstrings, the
protocol specification and the deployment guide.

The site is built once with ``mkdocs build --strict`` into a temporary directory: a broken link, a
missing anchor or a docstring cross-reference (``:class:`...```) that names nothing fails the build
and so this test. The docs tooling (scripts/griffe_sphinx_roles.py, scripts/mkdocs_hooks.py) is
also tested directly on small inputs, so each rule is seen to fail when it should.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the first test pays for the build (about 10 s alone, 30 s on a busy 2-core machine)
pytestmark = pytest.mark.timeout(300)

if os.environ.get("CI") or os.environ.get("SALTLINE_REQUIRE_DOCS") == "1":
    # CI installs the docs extra (scripts/bootstrap.sh): there, fail instead of skipping
    import mkdocs  # noqa: F401
    import mkdocstrings_handlers.python  # noqa: F401
else:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")

import griffe  # noqa: E402


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


roles = _load("griffe_sphinx_roles")
hooks = _load("mkdocs_hooks")


# -- the whole site -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    print(f"mkdocs build --strict: {time.monotonic() - started:.1f} s")
    return out


def test_the_sdk_reference_has_the_client_its_events_errors_and_stores(site: Path) -> None:
    client = (site / "api" / "client.html").read_text()
    for anchor in ("Client", "Client.create", "Client.send_text", "Client.events", "Client.conversation"):
        assert f'id="saltline.client_sdk.client.{anchor}"' in client, anchor
    events = (site / "api" / "events.html").read_text()
    assert 'id="saltline.client_sdk.core.events.MessageReceived"' in events
    errors = (site / "api" / "errors.html").read_text()
    assert 'id="saltline.client_sdk.errors.SaltlineError"' in errors
    stores = (site / "api" / "stores.html").read_text()
    for name in ("sqlite.SqliteStore", "memory.MemoryStore", "base.Store"):
        assert f'id="saltline.client_sdk.stores.{name}"' in stores, name


def test_docstring_roles_became_links_and_none_is_left_raw(site: Path) -> None:
    client = (site / "api" / "client.html").read_text()
    # Client.create's docstring says :meth:`close`; the module's says :mod:`saltline.client_sdk.core`
    assert 'href="#saltline.client_sdk.client.Client.close"' in client
    pages = list((site / "api").glob("*.html"))
    assert len(pages) >= 10
    for page in pages:
        text = page.read_text()
        for role in roles.ROLES:
            assert f":{role}:`" not in text, (page.name, role)
        assert "<autoref" not in text, page.name  # every autoref tag was resolved or unwrapped


def test_every_public_crypto_module_is_in_the_reference(site: Path) -> None:
    rendered = "".join(p.read_text() for p in (site / "api").glob("crypto-*.html"))
    modules = sorted(p.stem for p in (ROOT / "crypto").glob("*.py") if not p.stem.startswith("_"))
    assert len(modules) >= 10
    missing = [m for m in modules if f'id="saltline.crypto.{m}"' not in rendered]
    assert not missing, f"add these modules to a docs/api/crypto-*.md page: {missing}"


def test_the_protocol_and_deploy_pages_are_in_the_site(site: Path) -> None:
    for page in sorted((ROOT / "docs" / "protocol").glob("*.md")):
        name = "index" if page.stem == "README" else page.stem  # a folder's README is its index
        assert (site / "protocol" / f"{name}.html").is_file(), page.name
    assert (site / "deploy.html").is_file()
    # GitHub's anchors: the specification's links to them work on the site too
    vectors = (site / "protocol" / "vectors.html").read_text()
    assert 'id="57-loginjson--keysmd--4"' in vectors


# -- the griffe extension: Sphinx roles -> checked cross-references ---------------------------------------

PKG = '''
"""The module. See :class:`Thing`, :meth:`~pkg.mod.Thing.run`, :func:`helper` and :mod:`pkg.other`.

Layout::

    a || b
"""
import asyncio


class Thing:
    """A thing; :meth:`run` runs it, :class:`asyncio.Task` is the standard library's."""

    def run(self) -> None:
        """Run. Unlike :meth:`Other.run`, which is elsewhere."""


def helper() -> None:
    """Help."""
'''

OTHER = '''
"""Another module."""


class Other:
    """Other."""

    def run(self) -> None:
        """Run."""
'''


def _load_pkg(tmp_path: Path, extra: str = "") -> griffe.Module:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""The package."""\n')
    (pkg / "mod.py").write_text(PKG + extra)
    (pkg / "other.py").write_text(OTHER)
    extensions = griffe.load_extensions(roles.SphinxRoles(packages=("pkg",)))
    module = griffe.load("pkg", search_paths=[tmp_path], extensions=extensions)
    assert isinstance(module, griffe.Module)
    return module


def _doc(obj: griffe.Object | griffe.Alias) -> str:
    assert obj.docstring is not None
    return obj.docstring.value


def test_roles_resolve_from_the_object_outwards_and_by_unique_name(tmp_path: Path) -> None:
    pkg = _load_pkg(tmp_path)
    mod = _doc(pkg["mod"])
    assert '<autoref identifier="pkg.mod.Thing" optional><code>Thing</code></autoref>' in mod
    assert '<autoref identifier="pkg.mod.Thing.run" optional><code>run()</code></autoref>' in mod
    assert '<autoref identifier="pkg.mod.helper" optional><code>helper()</code></autoref>' in mod
    assert '<autoref identifier="pkg.other" optional><code>pkg.other</code></autoref>' in mod
    thing = _doc(pkg["mod.Thing"])
    assert '<autoref identifier="pkg.mod.Thing.run" optional>' in thing  # the class's own method
    assert "`asyncio.Task`" in thing and 'identifier="asyncio' not in thing  # stdlib: code only
    run = _doc(pkg["mod.Thing.run"])
    assert '<autoref identifier="pkg.other.Other.run" optional>' in run  # unique tail, another module


def test_a_literal_block_marker_becomes_a_colon(tmp_path: Path) -> None:
    mod = _doc(_load_pkg(tmp_path)["mod"])
    assert "Layout:\n\n    a || b" in mod
    assert "::" not in mod.replace("a || b", "")


def test_a_reference_to_nothing_or_to_two_things_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = '''

def broken() -> None:
    """See :class:`Thnig` and :meth:`run` (Thing.run or Other.run?)."""
'''
    with caplog.at_level(logging.WARNING):
        pkg = _load_pkg(tmp_path, extra)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("unresolved cross-reference :class:`Thnig`" in w for w in warnings), warnings
    assert any("ambiguous" in w and ":meth:`run`" in w for w in warnings), warnings
    assert len(warnings) == 2, warnings  # the package's valid references are not reported
    broken = _doc(pkg["mod.broken"])
    assert "`Thnig`" in broken and "`run()`" in broken  # shown as code, not as a link


# -- the MkDocs hooks: GitHub anchors, links outside docs/ --------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("5.7 login.json — keys.md § 4", "57-loginjson--keysmd--4"),
        ("3. Padding (Padmé)", "3-padding-padmé"),
        ("6.4 Account-key handoff", "64-account-key-handoff"),
        ("Redis message format (for operators)", "redis-message-format-for-operators"),
    ],
)
def test_headings_get_githubs_anchors(heading: str, slug: str) -> None:
    assert hooks.github_slug(heading) == slug


def test_links_leaving_the_docs_become_repository_paths_and_broken_links_stay(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "protocol" / "vectors").mkdir(parents=True)
    (docs / "protocol" / "keys.md").write_text("# Keys\n")
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "nginx.conf").write_text("")
    page = textwrap.dedent(
        """\
        See [`deploy/nginx.conf`](../../deploy/nginx.conf), the [vectors](vectors/),
        [keys](keys.md#1-keys), [gone](../../deploy/gone.conf) and [the web](https://example.org/x).

        ```
        [not a link](../../deploy/nginx.conf)
        ```
        """
    )
    out = hooks._rewrite_links(page, (docs / "protocol").resolve(), docs.resolve(), tmp_path.resolve())
    assert "See `deploy/nginx.conf`, the `docs/protocol/vectors/`," in out
    assert "[keys](keys.md#1-keys)" in out  # a page of the site: left to mkdocs to check
    assert "[gone](../../deploy/gone.conf)" in out  # missing: left, so --strict reports it
    assert "[the web](https://example.org/x)" in out
    assert "[not a link](../../deploy/nginx.conf)" in out  # code blocks are not touched
