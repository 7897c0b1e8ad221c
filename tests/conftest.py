"""Shared fixtures: one real SmolLM2-135M-Instruct target (fp32) per test process.

Under pytest-xdist (`-n 2`, what CI runs) each worker uses one thread: batch-1 decoding of this
small model is latency-bound, so two single-thread workers get nearly twice the throughput of one
two-thread process.
"""

import os

import pytest
import torch

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def target():
    from hass_sglang.target import load_target

    return load_target(dtype=torch.float32)


@pytest.fixture(scope="session")
def target_config(target):
    return target.config
