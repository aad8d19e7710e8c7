"""Reading the warehouse beside its owner: read-only SQL, snapshots, file rewrites."""
