"""After training: prediction (:mod:`.predict`), metrics (:mod:`.metrics`), scoring a split (:mod:`.score`)."""
