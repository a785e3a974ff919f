"""Training memory: exact accounting (:mod:`.accounting`), the papers' memory tables
(:mod:`.paper_tables`), capacity under a budget (:mod:`.capacity`) and complexity (:mod:`.complexity`)."""
