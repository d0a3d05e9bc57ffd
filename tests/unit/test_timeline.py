"""timeline.read_trace: the one reader of a run's timeline.json (comm_profile and the projection use it)."""
import pytest

from asyncsgd.projection.measure import profile_from_run
from asyncsgd.projection.profile import ProfileError
from asyncsgd.timeline import TraceError, read_trace, write_trace


def test_read_trace_gives_back_what_write_trace_wrote(tmp_path):
    events = [{"ph": "X", "pid": 0, "tid": 0, "ts": 1.0, "dur": 2.0, "name": "forward", "args": {"step": 3}}]
    write_trace(tmp_path / "timeline.json", events)
    assert read_trace(tmp_path) == events


def test_read_trace_says_what_is_missing_in_one_line(tmp_path):
    with pytest.raises(TraceError, match=r"no timeline.json; run with timeline=true$"):
        read_trace(tmp_path)
    (tmp_path / "timeline.json").write_text('{"events": []}')
    with pytest.raises(TraceError, match="not a Chrome trace written by asyncsgd"):
        read_trace(tmp_path)
    (tmp_path / "timeline.json").write_text("{")
    with pytest.raises(TraceError, match="not a Chrome trace written by asyncsgd"):
        read_trace(tmp_path)


def test_the_projection_reports_a_missing_trace_as_its_own_error(tmp_path):
    with pytest.raises(ProfileError, match=r"run with timeline=true \(and timeline_steps >= 3\)"):
        profile_from_run(tmp_path)
