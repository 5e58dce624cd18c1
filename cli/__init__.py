"""The `treerpo` command line (click). Commands are thin: they resolve config and plugins and call the core."""
