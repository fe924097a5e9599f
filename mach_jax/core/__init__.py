"""The model core shared by training and read-out: hashing, the member, losses, row-sparse
optimisers, the mesh, and the backend-measured choices."""
