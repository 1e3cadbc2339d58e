"""Running relion_py's programs on a Dask distributed cluster (a LocalCluster, a running scheduler, dask-jobqueue,
dask-mpi). Imported only when one of the cluster flags is given: the single-process path never imports Dask."""
