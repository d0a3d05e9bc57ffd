"""asyncsgd's Hydra launcher plugins (Hydra looks for launchers in the ``hydra_plugins`` package)."""
