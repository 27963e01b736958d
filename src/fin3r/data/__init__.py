"""Data: the sample contract and everything that produces samples (docs/data.md).

- :mod:`fin3r.data.views`      the sample dict; crops/resizes consistent for image, depth, K
- :mod:`fin3r.data.world`      the synthetic world (exact geometry; datasets for mono + replay)
- :mod:`fin3r.data.labels`     the pseudo-label cache; ``LabelledImages`` (mono samples)
- :mod:`fin3r.data.sa1b`       SA-1B / any images: folders and ``sa_*.tar`` shards
- :mod:`fin3r.data.hypersim`   Hypersim raw layout -> replay samples
- :mod:`fin3r.data.tartanair`  TartanAir raw layout -> replay samples
- :mod:`fin3r.data.sequences`  frame-interval sampling shared by the replay readers
- :mod:`fin3r.data.mixture`    ``MixtureSampler`` / ``MixtureDataset``: per-source counts per epoch
"""
