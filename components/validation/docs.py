"""Great Expectations Data Docs for a validation run, written to a local folder.

GE 1.x renders Data Docs from a context's *data docs sites*. An ephemeral context (no ``gx/`` folder, nothing
written elsewhere) accepts a filesystem site; the checkpoint's ``UpdateDataDocsAction`` then writes
``<docs_dir>/index.html`` (the list of validation runs, with status) and one page per run under
``<docs_dir>/validations/<suite>/<run>/<timestamp>/`` that shows every expectation, the failing ones with their
unexpected values and the ``row``/``id`` of each failing record. GE's index builder keeps only the pages of runs
its context knows, so with an ephemeral context a folder holds the latest run's page (an earlier one is removed).

The gate uses this when ``validate_dataset(..., docs_dir=...)`` is given; on its own::

    ctx = gx.get_context(mode="ephemeral")
    add_local_site(ctx, Path("reports/data_docs"))
    ...  # run a Checkpoint with actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")]
    page = page_path(ctx, validation_result_identifier)
    make_offline(Path("reports/data_docs"))

Offline (issue 18): GE 1.x's templates load Bootstrap, jQuery, bootstrap-table (which draws the index's list of
runs), the date picker, Font Awesome and the logo from CDNs, so offline the pages render unstyled and empty, and
online they contact third parties. :func:`make_offline` copies the same files, shipped in ``vendor/`` (the exact
versions the templates name, from their npm packages; ``vendor/manifest.json`` maps each CDN URL to its file and
records each file's package, path and sha256), into ``<docs_dir>/static/vendor/``, points every page at them by
relative path, takes the logo from the site's own ``static/images``, unlinks GE's web links, drops the newsletter
footer and removes the unused images GE copies into every site. The vega scripts are dropped: no page of
medtune's suite draws a chart (GE renders charts only for profiling, KL divergence and distinct-values
expectations); ``tests/unit/validation/test_docs_offline.py`` fails if one starts to.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

SITE_NAME = "medtune_local"
#: The shipped assets (see the module docstring); copied to ``<docs_dir>/static/vendor``.
VENDOR_DIR = Path(__file__).with_name("vendor")
#: GE's web bucket for its logos; the site's own ``static/images`` holds the light one.
GE_ASSETS = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
GE_IMAGES = {"logo-long.png": "logo-long.png", "full_logo_dark.png": "logo-long.png"}

log = logging.getLogger(__name__)
_EXTERNAL = re.compile(r"^(?:https?:)?//", re.I)
_TAG = re.compile(r"<(script|link|img)\b([^>]*)>(\s*</script>)?", re.I)
_URL_ATTR = re.compile(r'\b(src|href)\s*=\s*"([^"]*)"', re.I)
_HREF = re.compile(r'\s+href\s*=\s*"((?:https?:)?//[^"]*)"', re.I)
#: A site-relative reference to the static folder, however many ``../`` GE put before it (its favicon template
#: counts one level too few on validation pages).
_STATIC_REF = re.compile(r"^(?:\.{1,2}/)*static/")
_SRI_ATTR = re.compile(r'\s+(?:integrity|crossorigin)\s*=\s*"[^"]*"', re.I)
_ANCHOR = re.compile(r"<a\b([^>]*)>", re.I)
_CSS_URL = re.compile(r"""url\(\s*(['"]?)((?:https?:)?//[^'")]*)\1\s*\)""", re.I)
_FOOTER = re.compile(r"<footer>.*?</footer>", re.I | re.S)


def site_config(docs_dir: Path) -> dict[str, Any]:
    """A GE data docs site that writes static HTML under ``docs_dir``."""
    return {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "show_how_to_buttons": False,  # no "how to" tutorial links in an offline report
    }


def add_local_site(context: Any, docs_dir: Path) -> None:
    """Register ``docs_dir`` as the context's data docs site (created if missing)."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    context.add_data_docs_site(SITE_NAME, site_config(docs_dir))


def data_docs_action() -> Any:
    """The checkpoint action that renders the run into every site of the context."""
    import great_expectations as gx

    return gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME])


def page_path(context: Any, result_identifier: Any) -> Path | None:
    """The local HTML page GE wrote for one validation result, or None if it is not there."""
    urls = context.get_docs_sites_urls(resource_identifier=result_identifier, site_name=SITE_NAME)
    for entry in urls:
        url = entry.get("site_url")
        if url and url.startswith("file://"):
            path = Path(unquote(urlparse(url).path))
            if path.is_file():
                return path
    return None


@cache
def _manifest_urls() -> dict[str, str | None]:
    """CDN URL -> file under ``vendor/`` (None: dropped)."""
    urls: dict[str, str | None] = json.loads((VENDOR_DIR / "manifest.json").read_text(encoding="utf-8"))["urls"]
    return urls


def _local(url: str, static: str) -> str | None:
    """The relative path that replaces an external ``url`` on a page whose ``static`` folder is at ``static``
    (relative to the page), or None when the reference is dropped."""
    if url.startswith(GE_ASSETS):
        name = GE_IMAGES.get(urlparse(url).path.rsplit("/", 1)[-1])
        return f"{static}/images/{name}" if name else None
    target = _manifest_urls().get(url)
    if target is None and url not in _manifest_urls():
        log.warning("Data Docs: no local copy of %s; the reference is dropped", url)
    return f"{static}/vendor/{target}" if target else None


def localise_html(html: str, static: str) -> str:
    """One page with every external reference replaced by a local file under ``static`` or removed: scripts,
    stylesheets and images point into ``static/vendor`` or ``static/images`` (without their SRI attributes, which
    make browsers refuse file:// scripts), links to the web become plain text, CSS ``url()``s of GE's logo
    point at the local one."""

    def tag(match: re.Match[str]) -> str:
        name, attrs, closing = match.group(1), match.group(2), match.group(3) or ""
        found = _URL_ATTR.search(attrs)
        if found is None:
            return match.group(0)
        if not _EXTERNAL.match(found.group(2)):
            fixed = _STATIC_REF.sub(f"{static}/", found.group(2))
            return f"<{name}{attrs[: found.start(2)]}{fixed}{attrs[found.end(2) :]}>{closing}"
        local = _local(found.group(2), static)
        if local is None:
            return ""  # the whole element (a script's closing tag included)
        attrs = _SRI_ATTR.sub("", attrs[: found.start(2)] + local + attrs[found.end(2) :])
        return f"<{name}{attrs}>{closing}"

    def anchor(match: re.Match[str]) -> str:
        return f"<a{_HREF.sub('', match.group(1))}>"

    def css_url(match: re.Match[str]) -> str:
        local = _local(match.group(2), static)
        return f"url('{local}')" if local else "none"

    html = _FOOTER.sub(lambda m: "" if "newsletter" in m.group(0) else m.group(0), html)  # GX Cloud's
    html = _TAG.sub(tag, html)
    html = _ANCHOR.sub(anchor, html)
    return _CSS_URL.sub(css_url, html)


def make_offline(docs_dir: Path) -> None:
    """Make a GE Data Docs folder render fully offline (see the module docstring); safe to run again."""
    docs_dir = Path(docs_dir)
    static = docs_dir / "static"
    target = static / "vendor"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(VENDOR_DIR, target)
    pages = sorted(docs_dir.rglob("*.html"))
    texts = []
    for page in pages:
        html = page.read_text(encoding="utf-8")
        local = localise_html(html, Path(os.path.relpath(static, page.parent)).as_posix())
        if local != html:
            page.write_text(local, encoding="utf-8")
        texts.append(local)
    # GE copies its whole static folder (3.6 MB, mostly tutorial GIFs) into every site; keep what a page uses.
    used = "\n".join(texts)
    for path in sorted(static.rglob("*"), reverse=True):  # files before their folders
        if path.is_relative_to(target):
            continue
        if path.is_file() and path.name not in used:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
