"""First-party task and delimiter-rule plugins (installed as treerpo_tasks)."""
