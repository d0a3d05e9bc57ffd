"""Unit-test fixtures: a real gloo group of size 1 for strategy code."""
from __future__ import annotations

import socket

import pytest

from asyncsgd.comm.torchdist import TorchDistCommunicator


@pytest.fixture(scope="session")
def comm():
    import os

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    c = TorchDistCommunicator("gloo", timeout_s=30)
    yield c
    dist.destroy_process_group()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
