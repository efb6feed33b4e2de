"""Build farms: a package repository's deltas computed in parallel, locally or on a Dask
cluster, through a content-addressed cache (docs/build-farm.md).

`task` says what determines a delta (its cache key) and computes it; `cache` stores deltas on
disk and checks them on the way back; `executor` runs tasks on local processes or Dask
workers; `build` puts it together into signed packages, an index and a manifest."""

from fotadelta.farm.build import Build, PackageRecord, build_repo
from fotadelta.farm.cache import DeltaCache, default_dir
from fotadelta.farm.executor import DaskCluster, Executor, FarmError, LocalPool, default_workers
from fotadelta.farm.task import DeltaOptions

__all__ = ["Build", "PackageRecord", "DaskCluster", "DeltaCache", "DeltaOptions", "Executor", "FarmError", "LocalPool",
           "build_repo", "default_dir", "default_workers"]
