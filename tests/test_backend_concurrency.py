"""The backend flag is per thread and per asyncio task (issue 16): a ``use_backend`` block in one
thread or task is invisible to the others, and first imports are serialised."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import nnxp
from nnxp import backend
from nnxp.layers import Dense


def _two_threads(first: str, second: str, rounds: int = 200) -> list[str]:
    """Each thread enters its own use_backend block, then both read it many times, in lockstep,
    while the other is inside its block; returns the wrong reads."""
    barrier = threading.Barrier(2)
    wrong: list[str] = []
    built: dict[str, str] = {}

    def worker(name: str) -> None:
        with nnxp.use_backend(name):
            barrier.wait()  # both blocks are open from here on
            for _ in range(rounds):
                seen = nnxp.get_backend().name
                if seen != name:
                    wrong.append(f"{name} saw {seen}")
            model = nnxp.Sequential([Dense(2, 1)], seed=0)
            built[name] = backend.backend_name_of(model.layers[0].params["W"])
            barrier.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wrong += [f"model built in {n} on {b}" for n, b in built.items() if b != n]
    return wrong


def test_two_threads_each_see_their_own_backend() -> None:
    pytest.importorskip("array_api_strict")
    assert _two_threads("numpy", "array_api_strict") == []
    assert nnxp.get_backend().name == "numpy"


def test_two_asyncio_tasks_each_see_their_own_backend() -> None:
    pytest.importorskip("array_api_strict")
    wrong: list[str] = []

    async def task(name: str, entered: asyncio.Event, other: asyncio.Event) -> None:
        with nnxp.use_backend(name):
            entered.set()
            await other.wait()
            for _ in range(100):
                await asyncio.sleep(0)  # let the other task run inside its block
                if nnxp.get_backend().name != name:
                    wrong.append(name)

    async def main() -> None:
        a, b = asyncio.Event(), asyncio.Event()
        await asyncio.gather(task("numpy", a, b), task("array_api_strict", b, a))

    asyncio.run(main())
    assert wrong == []
    assert nnxp.get_backend().name == "numpy"


def test_interleaved_blocks_restore_the_default() -> None:
    """A enters, B enters, A exits, B exits: the old global stack left B's backend set."""
    pytest.importorskip("array_api_strict")
    steps = [threading.Event() for _ in range(4)]
    after: dict[str, str] = {}

    def a() -> None:
        with nnxp.use_backend("array_api_strict"):
            steps[0].set()
            steps[1].wait()
        after["a"] = nnxp.get_backend().name
        steps[2].set()

    def b() -> None:
        steps[0].wait()
        with nnxp.use_backend("numpy"):
            steps[1].set()
            steps[2].wait()
        after["b"] = nnxp.get_backend().name

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert after == {"a": "numpy", "b": "numpy"}
    assert nnxp.get_backend().name == "numpy"


def test_set_backend_is_the_process_default_and_new_threads_see_it() -> None:
    pytest.importorskip("array_api_strict")
    previous = nnxp.set_backend("array_api_strict")
    try:
        seen: list[str] = []
        t = threading.Thread(target=lambda: seen.append(nnxp.get_backend().name))
        t.start()
        t.join()
        assert seen == ["array_api_strict"]
        with nnxp.use_backend("numpy"):  # set_backend inside a block: seen until it exits
            nnxp.set_backend("numpy")
            assert nnxp.get_backend().name == "numpy"
        assert nnxp.get_backend().name == "numpy"
    finally:
        nnxp.set_backend(previous.name, previous.device)


def test_first_imports_are_serialised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads resolving a backend at once never import concurrently."""
    inside, most = [0], [0]
    real = backend._namespace_for_locked

    def slow(name: str) -> Any:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        inside[0] -= 1
        return real(name)

    monkeypatch.setattr(backend, "_namespace_for_locked", slow)
    threads = [threading.Thread(target=backend._make, args=("numpy",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
