"""Sampling on plain tensors: noise schedules (``schedule``, ``schedulers``), seeded noise
(``noise``) and the sampler registry (``samplers``). Nothing here imports the graph, the nodes
or the models."""
