"""The `triton` backend: the custom op and its autograd (op), the launcher and its device model (launcher,
device, tile_table), the forward kernel (forward), the backward kernels (backward) and the tile helpers they share
(tiles). Nothing here imports triton at package import: the modules below do, where it is installed."""
