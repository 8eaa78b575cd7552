"""The `preprocess` Beam job: discovering an Adience tree, the job itself, its file operations and workers."""
