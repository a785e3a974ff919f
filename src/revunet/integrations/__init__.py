"""revunet's networks inside other frameworks (each integration is an optional extra)."""
