"""``iba`` (feature bottleneck, :mod:`.iba`) and ``input-iba`` (:mod:`.iba_input`, built on it)."""
