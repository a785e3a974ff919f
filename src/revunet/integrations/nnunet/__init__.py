"""revunet's reversible networks as nnU-Net v2 architectures (the optional extra ``nnunet``).

A plans file names a network by its import path; nnU-Net's ``get_network_from_plans`` builds it
with ``input_channels``, ``num_classes``, ``deep_supervision`` and the plans' ``arch_kwargs``.
"""
