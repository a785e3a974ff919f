"""The data layer: dataset layouts, the synthetic default dataset, preprocessing, splits, torch datasets.

One module per idea; import from the modules themselves (this package imports nothing eagerly,
so that `revunet` commands that need no data stay fast to start).
"""
