"""Every method gives the same maps on a graph fixed at batch 1 as on the same network with a
dynamic batch: the model then runs one sample per graph call, which breaks any method that
assumes one call sees the whole batch (taps, hooks, inserted modules)."""

from __future__ import annotations

import pytest

import xplain.testing as xt
from xplain.plugins.registry import Registry

METHODS = sorted(Registry().discover().methods)


@pytest.mark.parametrize("name", METHODS)
def test_fixed_batch_graph_gives_the_dynamic_graphs_maps(name):
    xt.check_fixed_batch(Registry().discover().method(name))
