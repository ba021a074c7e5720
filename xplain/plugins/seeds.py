"""Per-sample random generators, so batching never changes a stochastic map (invariant 4).

``ExplainRequest.generators`` and ``xplain.sample_generators`` both hand these out; they live
in the plugin layer (below the run stage) because the request object a plugin receives makes
them, and a plugin may call them itself.
"""

from __future__ import annotations

import hashlib

import torch


def sample_generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One generator per sample, seeded from the run seed and the sample's bytes.

    The noise a stochastic method draws for an image then depends only on the seed and the
    image — not on its position in the batch — so batching never changes a map."""
    gens = []
    for sample in x.detach():
        h = hashlib.blake2b(
            sample.float().cpu().numpy().tobytes(), digest_size=8, key=str(int(seed)).encode()
        )
        gens.append(
            torch.Generator(device=x.device).manual_seed(int.from_bytes(h.digest(), "little") >> 1)
        )
    return gens
