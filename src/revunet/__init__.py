"""revunet: memory-efficient reversible 3-D U-Nets for brain MRI segmentation, reproduced."""

__version__ = "0.1.0"
