"""`revunet train`, one concept per module.

- :mod:`~revunet.training.loop`: :func:`train` (the command's entry), ``fit`` (the epochs), ``train_epoch``, validation;
- :mod:`~revunet.training.setup`: building a :class:`~revunet.training.setup.Run` (datasets, model, loss, optimiser,
  scheduler, AMP, loader) and the one task/loss/model/data compatibility check;
- :mod:`~revunet.training.state`: :class:`~revunet.training.state.TrainingState`, the checkpoint files and the run folder;
- :mod:`~revunet.training.randomness`: seeding, saved generator states, determinism and the data order;
- :mod:`~revunet.training.distributed`: several processes under torchrun;
- :mod:`~revunet.training.losses`, :mod:`~revunet.training.early_stopping`, :mod:`~revunet.training.run_log`;
- :mod:`~revunet.training.errors`: the errors the command reports.
"""
