"""Experiments: one run's recipe (:mod:`.recipe`) and config.yaml's plan of runs (:mod:`.plan`)."""
