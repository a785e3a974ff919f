"""The embedded synthetic dataset: anatomy (:mod:`.anatomy`), tumours (:mod:`.tumour`),
MR contrasts (:mod:`.mri`) and the subjects and files they make (:mod:`.generate`)."""
