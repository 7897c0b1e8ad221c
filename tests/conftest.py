"""Shared fixtures: one real SmolLM2-135M-Instruct target (fp32) per test process.

Under pytest-xdist (`-n 2`, what CI runs) each worker uses one thread: batch-1 decoding of this
small model is latency-bound, so two single-thread workers get nearly twice the throughput of one
two-thread process. For the same reason every CPU server a worker starts gets one OpenMP thread
(`OMP_NUM_THREADS=1`, which ServerSpec keeps; a user's `hass serve` takes every core).
"""

import os

import pytest
import torch

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
if os.environ.get("PYTEST_XDIST_WORKER"):  # after torch's import: the servers', not this process's, threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def target():
    from hass_sglang.target import load_target

    return load_target(dtype=torch.float32)


@pytest.fixture(scope="session")
def target_config(target):
    return target.config
