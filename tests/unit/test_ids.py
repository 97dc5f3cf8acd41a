"""cds.ids: UUID version 4 from a buffered CSPRNG read, unique across threads and forks."""
from __future__ import annotations

import concurrent.futures as cf
import uuid
from typing import Any

import pytest

from cds import ids


def test_each_id_is_a_version_4_rfc_9562_uuid_in_canonical_form() -> None:
    for _ in range(3 * ids.BUFFER_BYTES // 16):   # across several buffer refills
        text = ids.new_id()
        value = uuid.UUID(text)
        assert str(value) == text
        assert value.version == 4 and value.variant == uuid.RFC_4122


def test_no_id_repeats_across_threads() -> None:
    with cf.ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [ids.new_id() for _ in range(2000)], range(8)))
    seen = [one for batch in batches for one in batch]
    assert len(seen) == 16000 and len(set(seen)) == 16000


@pytest.mark.slow
def test_a_forked_child_never_hands_out_the_parents_next_ids() -> None:
    import multiprocessing

    ids.new_id()   # a buffer with bytes left in it
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()

    def child(conn: Any) -> None:
        conn.send([ids.new_id() for _ in range(50)])

    proc = ctx.Process(target=child, args=(there,))
    proc.start()
    parent_next = {ids.new_id() for _ in range(50)}
    assert here.poll(20)
    assert not parent_next & set(here.recv())
    proc.join(10)
    assert proc.exitcode == 0
