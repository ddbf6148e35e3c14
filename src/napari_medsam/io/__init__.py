"""Files in and out: medical volumes with their geometry, plain images, the one table of formats."""
