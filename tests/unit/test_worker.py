"""asyncsgd.worker's entry for plain processes (launcher=emulated, mpiexec): how a finished worker ends."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from asyncsgd import worker


class Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch):
    """The codes os._exit was called with; the call raises Exited instead of ending pytest."""
    codes = []

    def fake_exit(code):
        codes.append(code)
        raise Exited()

    monkeypatch.setattr(worker.os, "_exit", fake_exit)
    monkeypatch.setattr(worker.logging, "shutdown", lambda: None)  # pytest's own handlers stay open
    return codes


def with_backend(monkeypatch, name: str) -> SimpleNamespace:
    cfg = SimpleNamespace(backend=SimpleNamespace(name=name))
    monkeypatch.setattr(worker, "load_config", lambda run_dir: cfg)
    return cfg


@pytest.mark.parametrize("backend, skips_finalization", [("gloo", True), ("nccl", True), ("mpi", False)])
def test_a_finished_worker_skips_finalization_except_under_mpi(monkeypatch, tmp_path, exits, backend,
                                                                skips_finalization):
    # torch.distributed workers leave with os._exit once the run is written (gloo's C++ objects
    # destroyed during finalization could abort a complete run); MPI ranks must reach MPI_Finalize
    cfg = with_backend(monkeypatch, backend)
    ran = []
    monkeypatch.setattr(worker, "run_worker", lambda c, run_dir: ran.append((c, run_dir)))
    if skips_finalization:
        with pytest.raises(Exited):
            worker.main([str(tmp_path)])
        assert exits == [0]
    else:
        worker.main([str(tmp_path)])
        assert exits == []
    assert ran == [(cfg, tmp_path)]


def test_a_worker_stopped_at_a_step_boundary_also_skips_finalization(monkeypatch, tmp_path, exits):
    # an agreed stop ends with status 130 once the checkpoint is written: the same teardown risk
    cfg = with_backend(monkeypatch, "gloo")

    def stopped(c, run_dir):
        raise SystemExit(worker.EXIT_INTERRUPTED)

    monkeypatch.setattr(worker, "run_worker", stopped)
    with pytest.raises(Exited):
        worker.main([str(tmp_path)])
    assert exits == [worker.EXIT_INTERRUPTED]
    cfg.backend.name = "mpi"  # MPI ranks leave through SystemExit, to MPI_Finalize
    with pytest.raises(SystemExit):
        worker.main([str(tmp_path)])
