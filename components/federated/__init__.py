"""Federated fine-tuning across sites that never share data: SLoRA (METHODS.md §4) and its baselines on Flower.

    from components.federated.settings import FedSettings
    from components.federated.runner import simulate
    history = simulate(FedSettings(method="slora", task="mlp", out_dir="out"), num_sites=3)

Modules: ``slora`` (shared mask, sparse/low-rank deltas, SVD init), ``server`` (aggregation, rejection, phases),
``client`` (one site's round), ``strategy`` + ``app`` (Flower's ServerApp/ClientApp), ``tasks``/``text``/``vlm``
(what sites train), ``partition`` (sites), ``runner`` (simulation, deployment), ``results`` (history, plot),
``inprocess`` (no transport, for benchmarks). Nothing is imported here: Flower and torch load on use.
Tests: ``.venv/bin/pytest tests/unit/federated tests/integration/test_federated.py``; benchmark:
``.venv/bin/python benchmarks/federated.py``; deployment: ``infra/flower/README.md``.
"""
