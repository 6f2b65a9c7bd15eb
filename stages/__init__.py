"""DVC stage entry points: thin wrappers that take paths from dvc.yaml and values from params.yaml."""
