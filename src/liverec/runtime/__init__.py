"""How the service runs: the composition root, the log follower that keeps each process's folds
current, the model server, snapshots of the folds, and the worker processes of ``liverec serve``."""
