"""MIP-IN: the plugin (:mod:`.mip_in`), the chain read off the graph (:mod:`.chain`), the inverse
steps and fitted state (:mod:`.invert`), fitting the inverses (:mod:`.fit`)."""
