"""cds.gcpause: automatic garbage collection is off while service calls run, and comes back."""
from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from cds import gcpause


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    assert gc.isenabled() and gcpause.state() == (0, False)
    yield
    gc.enable()
    assert gcpause.state() == (0, False)


def test_off_inside_on_after_even_when_the_call_raises() -> None:
    with gcpause.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError):
        with gcpause.paused():
            raise ValueError("a 4xx on the way out")
    assert gc.isenabled()


@contextmanager
def _another_call() -> Iterator[None]:
    """A call on another thread holds the pause for as long as the block runs."""
    inside, release = threading.Event(), threading.Event()

    def call() -> None:
        with gcpause.paused():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=call)
    t.start()
    assert inside.wait(5)
    try:
        yield
    finally:
        release.set()
        t.join(5)


def test_overlapping_calls_turn_it_back_on_when_the_last_one_ends() -> None:
    with _another_call():
        with gcpause.paused():
            assert gcpause.state() == (2, True)
        assert not gc.isenabled()          # the other call still runs
    assert gc.isenabled()


def test_a_collector_switched_off_elsewhere_stays_off() -> None:
    gc.disable()
    with gcpause.paused():
        pass
    assert not gc.isenabled()


class _Node:
    def __init__(self) -> None:
        self.me = self   # a cycle: only the collector frees it


def test_under_steady_overlap_cyclic_garbage_is_collected_after_max_pause(monkeypatch) -> None:
    """Calls that keep overlapping never let the count reach zero: the first call to end after
    MAX_PAUSE runs a full collection, so a cycle dropped meanwhile does not live on."""
    monkeypatch.setattr(gcpause, "MAX_PAUSE", 0.05)
    with _another_call():
        node = _Node()
        gone = weakref.ref(node)
        del node
        with gcpause.paused():     # ends before MAX_PAUSE: nothing collected yet
            pass
        assert gone() is not None and not gc.isenabled()
        time.sleep(0.1)
        with gcpause.paused():     # ends after MAX_PAUSE: a full collection
            pass
        assert gone() is None
        assert not gc.isenabled()  # the other call still runs: still paused


def test_a_service_call_leaves_the_collector_on(tmp_path) -> None:
    """Through the real Flask app: after a 200 and after a 400 the collector is on again, and
    during the call it was off (seen from inside the engine)."""
    from cds import create_app
    from cds.engine import Engine

    app = create_app({"require_auth": False, "log_level": "WARNING",
                      "database_url": f"sqlite:///{tmp_path / 'gc.sqlite3'}"})
    seen: list[bool] = []
    real = Engine.call

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return real(self, *args, **kwargs)

    example = Path(__file__).resolve().parents[2] / "fhir_examples" / "osteosarcopenia.request.json"
    body = json.loads(example.read_text())
    client = app.test_client()
    Engine.call = spy  # type: ignore[method-assign]
    try:
        ok = client.post("/cds-services/bone-muscle-health", data=json.dumps(body),
                         content_type="application/json")
        bad = client.post("/cds-services/bone-muscle-health", data=b"{not json",
                          content_type="application/json")
    finally:
        Engine.call = real  # type: ignore[method-assign]
    assert ok.status_code == 200, ok.get_json()
    assert bad.status_code == 400
    assert seen == [False]
    assert gc.isenabled()


@pytest.mark.slow
def test_a_child_forked_during_a_call_starts_with_the_collector_on() -> None:
    import multiprocessing

    def child(conn: Any) -> None:
        conn.send((gc.isenabled(), gcpause.state()))

    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    with gcpause.paused():
        proc = ctx.Process(target=child, args=(there,))
        proc.start()
    assert here.poll(20)
    assert here.recv() == (True, (0, False))
    proc.join(10)
    assert proc.exitcode == 0
