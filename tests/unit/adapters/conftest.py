"""One torch thread for the adapter tests: their models are tiny, so a second thread only adds synchronisation,
and on a shared, busy machine every parallel region waits for both threads to be scheduled (tests ran 4x slower
with 2 threads under load)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
