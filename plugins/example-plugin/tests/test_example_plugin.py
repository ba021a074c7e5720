"""The example plugin keeps xplain's plugin contract: the checks xplain runs on its built-ins."""

import sys

import xplain
import xplain.testing


def test_method_keeps_the_contract():
    xplain.testing.check_method("example-center-prior")


def test_metric_keeps_the_contract():
    xplain.testing.check_metric("example-map-mean")


def test_lazy_implementation_runs():
    method = xplain.get_registry().method("example-center-prior")
    assert method.explain == "xplain_example.impl:center_prior"
    model = xplain.testing.example_models()[0]
    maps = xplain.explain(model, model.example_input(1), method=method).maps
    assert "xplain_example.impl" in sys.modules and float(maps.max()) <= 1.0
