"""Source readers, registered by short name (``kind`` in the config). Importing this package registers them all;
readers import their heavy libraries (pydicom ...) inside the reader function, not here."""

from components.data.sources import (  # noqa: F401  (registration)
    dicom,
    llava_json,
    medmnist,
    phantom,
    safety_alignment,
    slake,
    vqa_rad,
)
from components.data.sources.base import (
    SOURCES,
    DataError,
    Quarantined,
    SourceContext,
    SourceImage,
    SourceSample,
    register_source,
    safe_path,
)

__all__ = [
    "SOURCES",
    "DataError",
    "Quarantined",
    "SourceContext",
    "SourceImage",
    "SourceSample",
    "register_source",
    "safe_path",
]
