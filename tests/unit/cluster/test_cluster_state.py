"""The cluster's control lock and desired state (server.cluster.state), and load plans."""

from __future__ import annotations

import asyncio

import pytest

from server.cluster.state import ClusterFiles, ClusterState, LoadOutcome
from server.core.errors import ModelLoadError, ModelNotReadyError
from server.core.plans import LoadPlan


def test_the_state_round_trips_and_a_missing_file_means_a_new_cluster(tmp_path):
    files = ClusterFiles(tmp_path)
    assert files.read() is None
    plan = LoadPlan('name: "m"\nmax_batch_size: 8\n', (1, 3), fingerprint=("x",))
    state = ClusterState(4, {"m": plan}, {"m": LoadOutcome(12.5, ("ModelLoadError", "bad"))})
    files.write(state)
    again = files.read()
    assert again.seq == 4 and again.models == {"m": plan}
    assert again.models["m"].fingerprint == ()  # not part of what a plan is
    with pytest.raises(ModelLoadError, match="bad"):
        again.loads["m"].raise_error()
    LoadOutcome(1.0).raise_error()  # a success raises nothing


def test_one_holder_at_a_time_and_a_bounded_wait(tmp_path):
    async def scenario():
        first, second = ClusterFiles(tmp_path), ClusterFiles(tmp_path)
        order = []
        async with first.locked(5, "load"):
            async with second.locked_if_free() as free:
                assert not free
            with pytest.raises(ModelNotReadyError, match="another load or unload"):
                async with second.locked(0.05, "unload of model 'm'"):
                    pass
            waiter = asyncio.ensure_future(_hold(second, order))
            await asyncio.sleep(0.05)
            order.append("first done")
        await waiter
        assert order == ["first done", "second held"]
        async with second.locked_if_free() as free:
            assert free

    asyncio.run(scenario())


async def _hold(files: ClusterFiles, order: list) -> None:
    async with files.locked(5, "load"):
        order.append("second held")
