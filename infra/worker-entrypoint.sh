#!/bin/sh
# The Prefect worker's entrypoint (infra/medtune.Dockerfile, infra/compose.yaml): on the first start the workspace
# volume ($MEDTUNE_WORKSPACE, /workspace) is empty and becomes a medtune workspace (`medtune init`: git + DVC,
# dvc.yaml, configs/, mlflow/; committed once so runs record a git commit); then the command runs. The code stays in
# the image (/opt/medtune), so a rebuilt image brings new code and the volume keeps the data, configs and history.
set -eu
ws="${MEDTUNE_WORKSPACE:-/workspace}"
if [ ! -f "$ws/dvc.yaml" ]; then
    MEDTUNE_WORKSPACE= medtune init "$ws"
    git -C "$ws" add -A
    git -C "$ws" -c user.name=medtune -c user.email=medtune@localhost commit -qm "medtune workspace"
fi
mkdir -p "$ws/data/intake"   # data/intake/<site>: where a site's identified files are put (never versioned)
# data/raw exists from the start: a workspace with neither data/raw nor data/intake/dicom is taken for the embedded
# default and gets pydicom's sample files in its intake on the first ingest (pipelines/stages.py, ingest_intake)
mkdir -p "$ws/data/raw"
exec "$@"
