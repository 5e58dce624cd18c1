"""First-party verifier plugins (installed as treerpo_verifiers)."""
