"""The guest agent's request workers: reused between jobs, never shared by two running jobs."""

from __future__ import annotations

import threading

from devenv.guestagent.agent import Workers


def test_a_finished_worker_runs_the_next_job() -> None:
    workers = Workers()
    seen: list[threading.Thread] = []
    for _ in range(3):
        workers.submit(lambda: seen.append(threading.current_thread()))
        workers.wait_idle()
    assert len(seen) == 3
    assert all(t is seen[0] for t in seen)  # one thread, started once


def test_concurrent_jobs_each_get_a_thread() -> None:
    workers = Workers()
    release = threading.Event()
    started = threading.Barrier(4, timeout=10)
    idents: list[threading.Thread] = []

    def job() -> None:
        idents.append(threading.current_thread())
        started.wait()  # all three jobs must run at once for the barrier to open
        release.wait(10)

    for _ in range(3):
        workers.submit(job)
    started.wait()
    release.set()
    workers.wait_idle()
    assert len({id(t) for t in idents}) == 3


def test_a_failing_job_leaves_the_worker_usable() -> None:
    workers = Workers()
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("job bug")

    workers.submit(boom)
    workers.wait_idle()
    workers.submit(done.set)
    assert done.wait(10)


def test_an_idle_worker_ends_after_its_idle_time() -> None:
    workers = Workers()
    workers.IDLE = 0.05
    ran_on: list[threading.Thread] = []
    workers.submit(lambda: ran_on.append(threading.current_thread()))
    workers.wait_idle()
    ran_on[0].join(5)
    assert not ran_on[0].is_alive()
    done = threading.Event()
    workers.submit(done.set)  # a new worker starts for the next job
    assert done.wait(10)
