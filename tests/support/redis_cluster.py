"""A real local Redis Cluster of three masters, from the same server binary as the other tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from receiver.server.embedded_redis import EmbeddedRedis
from receiver.server.network import free_port

SLOT_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


@dataclass
class LocalCluster:
    nodes: list[EmbeddedRedis]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @classmethod
    def start(cls, data_dir: Path, first_port: int = 0, timeout: float = 20) -> LocalCluster:
        """``first_port``: where the node named in ``url`` listens (default: any free port)."""
        nodes: list[EmbeddedRedis] = []
        for n in range(len(SLOT_RANGES)):
            config = {
                "cluster-enabled": "yes",
                "cluster-config-file": "nodes.conf",
                "cluster-node-timeout": "5000",
                # The bus port is otherwise port + 10000, which may be taken or out of range.
                "cluster-port": str(free_port()),
            }
            port = first_port if n == 0 else 0
            node = EmbeddedRedis(data_dir / f"node{n}", port=port, config=config)
            if nodes:
                node.password = nodes[0].password  # a cluster client logs in to every node alike
            nodes.append(node.start())
        cluster = cls(nodes)
        try:
            cluster._form(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _form(self, timeout: float) -> None:
        clients = [node.client(decode_responses=True) for node in self.nodes]
        for client, (first, last) in zip(clients, SLOT_RANGES, strict=True):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for client in clients[1:]:
            first = self.nodes[0]
            bus_port = first.config["cluster-port"]
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", first.port, bus_port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [client.execute_command("CLUSTER", "INFO") for client in clients]
            if all(
                "cluster_state:ok" in info and "cluster_known_nodes:3" in info for info in infos
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the local cluster did not form in {timeout}s: {infos[0]}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
