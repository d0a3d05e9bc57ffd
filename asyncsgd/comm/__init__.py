"""Communication backends behind one interface (see :mod:`asyncsgd.comm.base`)."""
from __future__ import annotations

from .base import CommTimeout, Communicator, DoneHandle, Handle


def make_communicator(backend_cfg, strategy_cfg=None) -> Communicator:
    """Create the communicator for ``backend_cfg`` in an already launched worker (``strategy_cfg``:
    the run's strategy, which ``backend.progress=auto`` depends on)."""
    if backend_cfg.name == "mpi":
        from .mpi import MPICommunicator

        return MPICommunicator(backend_cfg.timeout_s, progress=backend_cfg.resolve_progress(strategy_cfg),
                               max_inflight=backend_cfg.max_inflight, adaptive=backend_cfg.progress == "auto")
    from .torchdist import TorchDistCommunicator

    return TorchDistCommunicator(backend_cfg.name, backend_cfg.timeout_s)


__all__ = ["CommTimeout", "Communicator", "DoneHandle", "Handle", "make_communicator"]
