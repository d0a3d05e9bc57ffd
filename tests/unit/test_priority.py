"""backend.compute_nice: the training thread lowers its own priority; the backend's threads keep theirs."""
from __future__ import annotations

import threading

import pytest

from asyncsgd.comm import priority

pytestmark = pytest.mark.skipif(not priority.supported(), reason="per-thread nice values are Linux-only")


def _in_thread(fn):
    """Run ``fn`` in a fresh thread (nice values are per thread and never go back down without
    privilege: the test process's own threads must stay as they were)."""
    out, errors = {}, []

    def body():
        try:
            out["value"] = fn()
        except Exception as exc:  # re-raised in the test
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out.get("value")


def test_lowering_is_per_thread_and_capped_at_19():
    base = priority.thread_nice()

    def lower():
        return priority.lower_own_priority(5), priority.lower_own_priority(100), priority.thread_nice()

    first, capped, now = _in_thread(lower)
    assert first == min(19, base + 5)
    assert capped == now == 19
    assert priority.thread_nice() == base  # the calling test thread is untouched


def test_a_negative_increment_is_refused():
    with pytest.raises(ValueError, match="only lower"):
        priority.lower_own_priority(-1)


def test_threads_started_by_a_spawner_keep_the_priority_it_was_made_with():
    base = priority.thread_nice()

    def lowered_creator():
        spawner = priority.Spawner()  # made before the creator lowers its priority, as MPI does
        priority.lower_own_priority(7)
        seen = {}

        def record(key):
            seen[key] = priority.thread_nice()

        direct = threading.Thread(target=record, args=("direct",))
        direct.start()
        direct.join()
        spawned = threading.Thread(target=record, args=("spawned",))
        spawner.start(spawned)
        spawned.join()
        spawner.close()
        return seen

    seen = _in_thread(lowered_creator)
    assert seen["direct"] == min(19, base + 7)  # why the spawner exists: a new thread inherits its creator's
    assert seen["spawned"] == base


def test_a_thread_that_cannot_start_is_reported_to_the_caller():
    spawner = priority.Spawner()
    t = threading.Thread(target=lambda: None)
    spawner.start(t)
    t.join()
    with pytest.raises(RuntimeError, match="once"):
        spawner.start(t)  # a thread starts only once
    spawner.start(threading.Thread(target=lambda: None))  # and the spawner still serves
    spawner.close()


def test_yield_to_backend_reports_every_threads_priority():
    base = priority.thread_nice()
    assert priority.yield_to_backend(0) == {"compute_nice": 0}

    def yielded():
        return priority.yield_to_backend(4)

    done = _in_thread(yielded)
    assert done["training_thread_nice"] == min(19, base + 4)
    assert done["compute_nice"] == min(19, base + 4) - base
    assert base in done["other_threads_nice"]  # this test's main thread


def test_threads_nice_lists_this_process_threads():
    values = priority.threads_nice()
    assert threading.get_native_id() in values
    assert values[threading.get_native_id()] == priority.thread_nice()
