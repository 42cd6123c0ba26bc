"""The cluster tier's three RabbitMQ nodes: the package's own harness (console/local_cluster.py,
which the durability lesson uses too), on its default names and ports (eqa..eqc, 5701-5703)."""

from __future__ import annotations

from console.local_cluster import NODE_NAMES, Cluster, running_cluster

__all__ = ["NODE_NAMES", "Cluster", "running_cluster"]
