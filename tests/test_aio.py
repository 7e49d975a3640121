"""asyncio on lock and record tables (shmdict.aio): real processes, a real event loop.

Coroutines of one process exclude each other as well as other processes; a
wait never blocks the loop (another coroutine keeps running while 50 wait);
cancellation and timeouts leave nothing held; a SIGKILLed holder in another
process hands the lock on with ``recovered``.  The Redis part runs the same
against a real server.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
import warnings

import pytest

import shmdict

CTX = multiprocessing.get_context("spawn")


def run(coro, limit=30):
    return asyncio.run(asyncio.wait_for(coro, limit))


def _hold(name, key, rw, ready, release, kill_me):
    d = shmdict.open(name, shmdict.Lock(rw=rw), capacity=100)
    h = d[key].write() if rw else d[key]
    h.acquire()
    ready.set()
    if kill_me:
        time.sleep(60)
    release.wait(30)
    h.release()


def _holder(name, key, rw=False, kill_me=False):
    ready, release = CTX.Event(), CTX.Event()
    proc = CTX.Process(target=_hold, args=(name, key, rw, ready, release, kill_me))
    proc.start()
    assert ready.wait(30)
    return proc, release


async def _exclusive_count(d, key, n, ticks):
    inside = peak = 0

    async def one():
        nonlocal inside, peak
        async with d[key]:
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0)
            inside -= 1
    await asyncio.gather(*(one() for _ in range(n)))
    return peak


def test_coroutines_exclude_each_other_and_the_loop_keeps_running(name):
    d = shmdict.open(name, shmdict.Lock(), capacity=100)

    async def main():
        ticks = []

        async def ticker():            # "another route": must keep answering
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.005)
        t = asyncio.ensure_future(ticker())
        holder = d["k"]
        await holder.acquire_async()
        waiters = [asyncio.ensure_future(_exclusive_count(d, "k", 1, ticks)) for _ in range(50)]
        before = len(ticks)
        await asyncio.sleep(0.3)       # 50 coroutines wait; the ticker must not
        assert len(ticks) - before >= 5
        assert not any(w.done() for w in waiters)
        holder.release()
        peaks = await asyncio.gather(*waiters)
        assert max(peaks) == 1
        assert await _exclusive_count(d, "k", 50, ticks) == 1
        t.cancel()
        assert d.owner("k") is None
    run(main())


def test_waits_on_another_process_without_blocking_the_loop(name):
    d = shmdict.open(name, shmdict.Lock(), capacity=100)
    proc, release = _holder(name, "k")
    try:
        async def main():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.005)
            t = asyncio.ensure_future(ticker())
            got = asyncio.ensure_future(d["k"].acquire_async())
            await asyncio.sleep(0.3)
            assert not got.done() and ticks >= 5
            # a timeout and a non-blocking try give up without taking it
            assert await d["k"].acquire_async(timeout=0.05) is False
            assert await d["k"].acquire_async(blocking=False) is False
            started = time.monotonic()
            release.set()              # the futex wakes the waiting thread
            assert await got is True
            assert time.monotonic() - started < 5
            assert d.owner("k") == os.getpid()
            t.cancel()
        run(main())
    finally:
        release.set()
        proc.join(30)
    # the handle that won released nothing yet: the lock is still ours
    assert d.owner("k") == os.getpid()


def test_cancelled_waiters_leave_nothing_held(name):
    d = shmdict.open(name, shmdict.Lock(), capacity=100)
    proc, release = _holder(name, "k")
    try:
        async def main():
            queued = [asyncio.ensure_future(d["k"].acquire_async()) for _ in range(5)]
            await asyncio.sleep(0.1)   # the first waits in a thread, 4 at the gate
            for task in queued:
                task.cancel()
            for task in queued:
                with pytest.raises(asyncio.CancelledError):
                    await task
            release.set()
            # the abandoned thread wins the lock and gives it back at once
            async with d["k"]:
                assert d.owner("k") == os.getpid()
        run(main())
    finally:
        release.set()
        proc.join(30)
    assert d.owner("k") is None


def test_sigkilled_holder_hands_on_with_recovered(name):
    d = shmdict.open(name, shmdict.Lock(), capacity=100)
    proc, _ = _holder(name, "k", kill_me=True)

    async def main():
        h = d["k"]
        got = asyncio.ensure_future(h.acquire_async())
        await asyncio.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert await got is True
        assert h.recovered
        assert any(issubclass(w.category, shmdict.OwnerDiedWarning) for w in caught)
        h.release()
    run(main())
    proc.join(30)


def test_rw_readers_share_one_process_hold_and_writers_exclude(name):
    d = shmdict.open(name, shmdict.Lock(rw=True), capacity=100)

    async def main():
        readers = peak = 0
        log = []

        async def reader():
            nonlocal readers, peak
            async with d["k"].read():
                readers += 1
                peak = max(peak, readers)
                log.append(("r", len(d.readers("k"))))
                await asyncio.sleep(0.01)
                readers -= 1

        async def writer():
            async with d["k"].write():
                log.append(("w", readers))
                await asyncio.sleep(0.005)
        await asyncio.gather(*(reader() for _ in range(30)), writer(),
                             *(reader() for _ in range(30)))
        assert peak == 30                     # 30 coroutines share, beyond the 8 cells
        assert ("w", 0) in log
        assert all(cells == 1 for kind, cells in log if kind == "r")  # one process hold
        assert d.readers("k") == [] and d.owner("k") is None
    run(main())


def test_rw_reader_waits_for_a_writer_in_another_process(name):
    d = shmdict.open(name, shmdict.Lock(rw=True), capacity=100)
    proc, release = _holder(name, "k", rw=True)
    try:
        async def main():
            got = asyncio.ensure_future(d["k"].read().acquire_async())
            await asyncio.sleep(0.1)
            assert not got.done()
            release.set()
            assert await got
            assert d.readers("k") == [os.getpid()]
        run(main())
    finally:
        release.set()
        proc.join(30)


def _add_in_updates(name, n):
    async def main():
        s = shmdict.open(name, shmdict.Struct(n="q"), capacity=100)

        async def inc():
            async with s.update_async("k") as rec:
                value = rec.n
                await asyncio.sleep(0)        # other coroutines run meanwhile
                rec.n = value + 1
        await asyncio.gather(*(inc() for _ in range(n)))
    asyncio.run(main())


def test_struct_update_async_across_processes_and_coroutines(name):
    s = shmdict.open(name, shmdict.Struct(n="q"), capacity=100)
    procs = [CTX.Process(target=_add_in_updates, args=(name, 100)) for _ in range(2)]
    for p in procs:
        p.start()
    _add_in_updates(name, 100)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    async def failing():
        with pytest.raises(KeyError):
            async with s.update_async("k") as rec:
                rec.n = -1
                raise KeyError("no write-back")
        async with s["k"].update_async() as rec:
            rec.n += 1
    run(failing())
    assert s.read("k")[0].n == 301


def test_lock_async_on_redis(redis_url, name):
    d = shmdict.open(name, shmdict.Lock(rw=True), capacity=100, backend=redis_url, lease=2)
    try:
        async def main():
            assert await _exclusive_count(d, "k", 20, None) == 1
            h = d["k"]
            await h.acquire_async()
            assert await d["k"].acquire_async(timeout=0.05) is False
            h.release()
            async with d["k"].read():
                async with d["k"].read():
                    assert len(d.readers("k")) == 1
            s = shmdict.open(name + ".s", shmdict.Struct(n="q"), capacity=100,
                             backend=redis_url)

            async def inc():
                async with s.update_async("k") as rec:
                    rec.n += 1
            await asyncio.gather(*(inc() for _ in range(20)))
            assert s.read("k")[0].n == 20
            s.unlink()
        run(main())
    finally:
        d.unlink()
