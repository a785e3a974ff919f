"""The bytes of the files a synthetic release writes, the same for equal inputs (no timestamps).

Shared by the ordinary layouts (:mod:`revunet.data.synth.generate`) and the release stand-ins
(:mod:`revunet.data.synth.release`), so that neither has to import the other's internals.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np

# The columns of BraTS 2020's name_mapping.csv, which both writers fill.
NAME_MAPPING_COLUMNS = (
    "Grade",
    "BraTS_2019_subject_ID",
    "BraTS_2018_subject_ID",
    "BraTS_2017_subject_ID",
    "BraTS_2016_subject_ID",
    "BraTS_2020_subject_ID",
)


def nifti_gz_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz file's bytes; gzip without timestamp or name, so equal inputs give equal bytes."""
    image = nib.Nifti1Image(array, affine)
    image.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """An uncompressed .nii file's bytes (the BraTS 2018 release's files)."""
    return gzip.decompress(nifti_gz_bytes(array, affine))
