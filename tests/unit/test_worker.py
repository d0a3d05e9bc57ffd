"""asyncsgd.worker's entry for plain processes (launcher=emulated, mpiexec): how a finished worker ends."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from asyncsgd import worker


class Exited(Exception):
    pass


@pytest.mark.parametrize("backend, skips_finalization", [("gloo", True), ("nccl", True), ("mpi", False)])
def test_a_finished_worker_skips_finalization_except_under_mpi(monkeypatch, tmp_path, backend, skips_finalization):
    # torch.distributed workers leave with os._exit once the run is written (gloo's C++ objects
    # destroyed during finalization could abort a complete run); MPI ranks must reach MPI_Finalize
    cfg = SimpleNamespace(backend=SimpleNamespace(name=backend))
    ran, exits = [], []
    monkeypatch.setattr(worker, "load_config", lambda run_dir: cfg)
    monkeypatch.setattr(worker, "run_worker", lambda c, run_dir: ran.append((c, run_dir)))

    def fake_exit(code):
        exits.append(code)
        raise Exited()

    monkeypatch.setattr(worker.os, "_exit", fake_exit)
    monkeypatch.setattr(worker.logging, "shutdown", lambda: None)  # pytest's own handlers stay open
    if skips_finalization:
        with pytest.raises(Exited):
            worker.main([str(tmp_path)])
        assert exits == [0]
    else:
        worker.main([str(tmp_path)])
        assert exits == []
    assert ran == [(cfg, tmp_path)]


def test_a_worker_stopped_at_a_step_boundary_also_skips_finalization(monkeypatch, tmp_path):
    # an agreed stop ends with status 130 once the checkpoint is written: the same teardown risk
    cfg = SimpleNamespace(backend=SimpleNamespace(name="gloo"))
    exits = []
    monkeypatch.setattr(worker, "load_config", lambda run_dir: cfg)

    def stopped(c, run_dir):
        raise SystemExit(worker.EXIT_INTERRUPTED)

    def fake_exit(code):
        exits.append(code)
        raise Exited()

    monkeypatch.setattr(worker, "run_worker", stopped)
    monkeypatch.setattr(worker.os, "_exit", fake_exit)
    monkeypatch.setattr(worker.logging, "shutdown", lambda: None)
    with pytest.raises(Exited):
        worker.main([str(tmp_path)])
    assert exits == [worker.EXIT_INTERRUPTED]
    cfg.backend.name = "mpi"  # MPI ranks leave through SystemExit, to MPI_Finalize
    with pytest.raises(SystemExit):
        worker.main([str(tmp_path)])
