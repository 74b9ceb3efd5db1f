"""Great Expectations Data Docs for a validation run, written to a local folder.

GE 1.x renders Data Docs from a context's *data docs sites*. An ephemeral context (no ``gx/`` folder, nothing
written elsewhere) accepts a filesystem site; the checkpoint's ``UpdateDataDocsAction`` then writes
``<docs_dir>/index.html`` (the list of validation runs, with status) and one page per run under
``<docs_dir>/validations/<suite>/<run>/<timestamp>/`` that shows every expectation, the failing ones with their
unexpected values and the ``row``/``id`` of each failing record. Earlier runs' pages in the same folder stay and
are listed in the index.

The gate uses this when ``validate_dataset(..., docs_dir=...)`` is given; on its own::

    ctx = gx.get_context(mode="ephemeral")
    add_local_site(ctx, Path("reports/data_docs"))
    ...  # run a Checkpoint with actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")]
    page = page_path(ctx, validation_result_identifier)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

SITE_NAME = "medtune_local"


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
