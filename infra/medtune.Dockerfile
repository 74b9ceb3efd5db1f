# medtune's code and locked environment for the Prefect worker of infra/compose.yaml (issue 19: as specified).
# torch comes first, from PyTorch's own index: the CPU build by default, a CUDA build with a build argument
# (the version is the lock's pin, read from constraints.txt):
#   docker compose -f infra/compose.yaml --env-file infra/stack.env build prefect-worker             # CPU
#   TORCH_VARIANT=cu128 docker compose -f infra/compose.yaml --env-file infra/stack.env build prefect-worker
# `make setup` then installs the lock under the same constraint (torch==X matches X+cpu / X+cu128, so pip keeps it)
# and medtune itself; the last step fails the build if anything swapped torch for another variant.
# The code lives here (/opt/medtune, Prefect's working directory: infra/prefect.yaml); the workspace the runs use is
# the named volume at /workspace, made on first start by infra/worker-entrypoint.sh.
FROM python:3.11-slim
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
RUN apt-get update && apt-get install -y --no-install-recommends git make && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/medtune
# the environment first (a layer that survives code changes), then the code
COPY constraints.txt requirements-lock.txt ./
RUN python3 -m venv .venv \
    && .venv/bin/python -m pip install -q --no-cache-dir -U "pip>=25" \
    && .venv/bin/python -m pip install -q --no-cache-dir --index-url "$TORCH_INDEX" "$(grep -m1 '^torch==' constraints.txt)" \
    && .venv/bin/python -m pip install -q --no-cache-dir -c constraints.txt -r requirements-lock.txt
COPY . /opt/medtune
RUN make setup PY=python3 \
    && .venv/bin/python -c "import sys, torch; v = torch.__version__; sys.exit(0 if v.endswith('+$TORCH_VARIANT') else f'torch {v} is not the $TORCH_VARIANT build')"
ENV PATH=/opt/medtune/.venv/bin:$PATH DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 \
    MEDTUNE_WORKSPACE=/workspace
ENTRYPOINT ["/opt/medtune/infra/worker-entrypoint.sh"]
