"""Built-in quantization methods: every module here is imported by the registry, registering its methods."""
