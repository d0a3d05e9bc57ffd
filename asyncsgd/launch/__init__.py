"""Starting workers: locally (mpiexec / torch elastic agent) or under an external launcher."""
