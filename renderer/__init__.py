"""Everything that imports torch: device choice, weights, generators, guidance, the worker."""
