"""A private Redis Cluster of valkey-server processes (masters only), formed without valkey-cli.

Each node runs with ``--cluster-enabled yes`` on a free loopback port, with its
own directory (nodes.conf, log). Forming the cluster is what `valkey-cli
--cluster create` does, minus replicas: every node gets a distinct config
epoch, takes a contiguous range of the 16,384 slots (CLUSTER ADDSLOTSRANGE),
the first node MEETs the others (naming their bus ports), and we wait until every node reports
``cluster_state:ok`` and knows all the others.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from stack.process import ManagedProcess, free_port
from stack.redis_server import valkey_binary

SLOTS = 16384


class EmbeddedRedisCluster:
    """`masters` valkey-server nodes forming one cluster; `.url` is a seed node for `redis.RedisCluster`."""

    def __init__(self, run_dir: Path, masters: int = 3, startup_timeout_s: float = 20.0, host: str = "127.0.0.1",
                 node_timeout_ms: int = 2000) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        self.run_dir = Path(run_dir)
        self.host = host
        self.masters = masters
        self.startup_timeout_s = startup_timeout_s
        self.ports: list[int] = []
        self.bus_ports: list[int] = []
        self._processes: list[ManagedProcess] = []
        for i in range(masters):
            # The cluster bus defaults to port + 10000, which fails for ports above 55535: pick it too.
            port, bus = self._free_pair()
            self.ports.append(port)
            self.bus_ports.append(bus)
            node_dir = self.run_dir / f"node-{port}"
            self._processes.append(ManagedProcess(
                name=f"valkey-cluster-{i}",
                argv=[
                    valkey_binary(),
                    "--port", str(port),
                    "--bind", host,
                    "--cluster-enabled", "yes",
                    "--cluster-port", str(bus),
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(node_dir),
                    "--logfile", "",
                    "--protected-mode", "no",
                    "--daemonize", "no",
                ],
                log_path=node_dir / "valkey.log",
                pid_path=node_dir / "valkey.pid",
                cwd=node_dir,
            ))

    def _free_pair(self) -> tuple[int, int]:
        taken = set(self.ports) | set(self.bus_ports)
        while True:
            port, bus = free_port(self.host), free_port(self.host)
            if port != bus and not {port, bus} & taken:
                return port, bus

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.ports[0]}"

    @property
    def urls(self) -> list[str]:
        return [f"redis://{self.host}:{p}" for p in self.ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid]

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(host=self.host, port=port, socket_connect_timeout=1.0, socket_timeout=2.0,
                           decode_responses=True)

    def start(self) -> "EmbeddedRedisCluster":
        try:
            for proc, port in zip(self._processes, self.ports):
                (self.run_dir / f"node-{port}").mkdir(parents=True, exist_ok=True)
                proc.start()
            nodes = [self._node(p) for p in self.ports]
            try:
                for proc, node, port in zip(self._processes, nodes, self.ports):
                    proc.wait_ready(lambda n=node: bool(n.ping()), self.startup_timeout_s, f"PING {self.host}:{port}")
                self._form(nodes)
            finally:
                for node in nodes:
                    node.close()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, nodes: list[redis.Redis]) -> None:
        per = SLOTS // len(nodes)
        for i, node in enumerate(nodes):
            node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            first = i * per
            last = SLOTS - 1 if i == len(nodes) - 1 else first + per - 1
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port, bus in zip(self.ports[1:], self.bus_ports[1:]):
            nodes[0].execute_command("CLUSTER", "MEET", self.host, port, bus)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            states = [self._ready(node) for node in nodes]
            if all(states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ok after {self.startup_timeout_s}s: "
                                   f"{[n.execute_command('CLUSTER', 'INFO') for n in nodes]}")
            for proc in self._processes:
                code = proc.exited()
                if code is not None:
                    raise RuntimeError(f"{proc.name} exited with code {code}:\n{proc.log_tail()}")
            time.sleep(0.05)

    def _ready(self, node: redis.Redis) -> bool:
        info = node.execute_command("CLUSTER", "INFO")
        if isinstance(info, dict):
            fields = {k: str(v) for k, v in info.items()}
        else:
            fields = dict(line.split(":", 1) for line in str(info).splitlines() if ":" in line)
        return (fields.get("cluster_state", "").strip() == "ok"
                and int(fields.get("cluster_known_nodes", 0)) == self.masters
                and int(fields.get("cluster_slots_ok", 0)) == SLOTS)

    def stop(self) -> None:
        for proc in reversed(self._processes):
            try:
                proc.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass

    def __enter__(self) -> "EmbeddedRedisCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
