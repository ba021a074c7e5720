"""Stage 1, the ONNX front door: read and check the file, normalise the graph, convert it to torch."""

from .deferred_vision import install as _defer_torchvision

_defer_torchvision()
