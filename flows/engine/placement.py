"""Where a candidate learns a batch: in this process, or in shards on the pipeline's Dask
cluster when `distributed` says so (tasks/learn/shards.py). The one place Dask clients
are started, once per process (a local cluster takes a second or two to start)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tidemill.config.models import DistributedSpec
from tidemill.config.pipeline import PipelineConfig
from tidemill.tasks.learn.prequential import Learner, learn_here
from tidemill.tasks.learn.shards import dask_map, sharded_learner, should_distribute

if TYPE_CHECKING:
    from distributed import Client


@dataclass
class Placement:
    """The Dask clients of this process, by address."""

    _clients: dict[str, Client] = field(default_factory=dict)

    def learner(self, config: PipelineConfig, candidate: str, rows: int) -> Learner:
        """How `candidate` learns a batch of `rows` rows."""
        spec = config.distributed
        specs = {s.name: s for s in config.candidates}
        if spec is None or candidate not in specs:
            return learn_here
        if spec.mode == "auto" and not should_distribute(
            specs[candidate].estimator, rows, spec.workers
        ):
            return learn_here
        return sharded_learner(spec.workers, dask_map(self._client(spec)))

    def _client(self, spec: DistributedSpec) -> Client:
        key = spec.address or f"local:{spec.workers}"
        if key not in self._clients:
            from distributed import Client, LocalCluster

            if spec.address:
                self._clients[key] = Client(spec.address)
            else:
                cluster = LocalCluster(
                    n_workers=spec.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    host="127.0.0.1",
                )
                self._clients[key] = Client(cluster)
        return self._clients[key]

    def close(self) -> None:
        """Close every client and the local clusters this process started."""
        for client in self._clients.values():
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
        self._clients.clear()
