"""Scale out: whole slides and thousands of files, lazy in napari, distributed on Dask.

* :mod:`.lazy`: OME-Zarr and large/pyramidal TIFF as Dask arrays, never loaded whole.
* :mod:`.chunked`: halo'd per-chunk prediction, labels merged across chunks by union-find.
* :mod:`.zarr_out`: OME-Zarr label pyramids and the per-object table, written chunk by chunk.
* :mod:`.fanout`: ``deepcens segment`` over folders and globs, one task per file.
* :mod:`.cluster`: the Dask client: a local cluster, or an existing scheduler's address.
"""
