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


def communicator_for(backend: str, timeout_s: float, progress: str = "thread") -> Communicator:
    """A communicator by backend name, for the tools that time collectives outside a training run
    (the link and reduction benchmarks, the projection's calibration), in a worker already
    launched by mpiexec, torchrun or the emulated cluster."""
    from ..config import GlooConfig, MPIBackendConfig
    from ..launch.environment import detect, prepare_torchdist_env

    if backend == "mpi":
        return make_communicator(MPIBackendConfig(progress=progress, timeout_s=timeout_s))
    prepare_torchdist_env(detect())
    return make_communicator(GlooConfig(timeout_s=timeout_s))


__all__ = ["CommTimeout", "Communicator", "DoneHandle", "Handle", "communicator_for", "make_communicator"]
