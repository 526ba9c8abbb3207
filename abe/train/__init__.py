"""Training: the solver driver with run folders, snapshots and resume, and the offline demo."""
