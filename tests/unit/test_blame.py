"""Which rank the launcher names when a job fails (from pid files and failure reports)."""
from __future__ import annotations

from asyncsgd.launch.local import blame
from asyncsgd.runinfo import record_failure, write_pid


def test_the_rank_that_left_no_report_is_blamed_over_its_echoing_peer(tmp_path):
    """Rank 1 was SIGKILLed; rank 0 only reported the lost connection, and the launcher saw rank 0 go first."""
    for rank in (0, 1):
        write_pid(tmp_path, rank)
    record_failure(tmp_path, 0, RuntimeError("Connection closed by peer"), secondary=True)
    failure = blame(tmp_path, None, "fallback")
    assert failure.rank == 1 and "without a word" in failure.reason


def test_a_rank_that_reports_its_own_error_is_blamed(tmp_path):
    for rank in (0, 1, 2):
        write_pid(tmp_path, rank)
    record_failure(tmp_path, 2, ValueError("bad"), secondary=False)
    record_failure(tmp_path, 0, RuntimeError("Connection reset by peer"), secondary=True)
    assert blame(tmp_path, (1, "killed"), "fallback").rank == 2


def test_ambiguous_silence_falls_back_to_the_reports(tmp_path):
    for rank in (0, 1, 2):
        write_pid(tmp_path, rank)
    record_failure(tmp_path, 0, RuntimeError("Connection reset by peer"), secondary=True)
    assert blame(tmp_path, None, "fallback").rank == 0  # ranks 1 and 2 both silent: no guess
