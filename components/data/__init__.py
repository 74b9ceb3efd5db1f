"""The VL-Health data stage: source readers, the unified build, de-identification, splits.

Nothing is imported here (importing a submodule costs only what it needs). The entry points::

    from components.data.build import build_dataset, load_records     # build and read a dataset
    from components.data.deid import load_deid_key, pseudonym          # the secret key, patient pseudonyms
    from components.data.intake import ingest                          # identified intake -> de-identified raw
    from components.data.samples import materialize_embedded           # the embedded DICOM samples -> intake
    from components.data.records import Record                         # the record contract
    import components.data.sources                                     # registers every source reader
"""
