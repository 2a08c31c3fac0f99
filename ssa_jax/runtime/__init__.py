"""The runtime: the device mesh and batch sharding, distributed start-up, gs:// paths, CLI errors."""
