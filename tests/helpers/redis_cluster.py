"""A private Redis Cluster: 3 masters + 3 replicas, six `redis-server` processes on free
ports (each in its own directory), joined with `redis-cli --cluster create`. A test may
`kill` a master (its replica takes over after the node timeout) or move a slot with its keys.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.redis_server import redis_binary

NODE_TIMEOUT_MS = 2000


def redis_cli_binary() -> str | None:
    return shutil.which("redis-cli")


def cluster_port() -> int:
    """A free port whose cluster bus port (10 000 above it) is free too and at most 65535."""
    for _attempt in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class Node:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RedisCluster:
    """Six nodes, three of them masters; nothing persisted."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1) -> None:
        binary, cli = redis_binary(), redis_cli_binary()
        if binary is None or cli is None:
            raise FileNotFoundError("redis-server or redis-cli not found")
        self.binary, self.cli = binary, cli
        self.workdir = workdir
        self.nodes = [Node(cluster_port(), workdir / f"node{i}")
                      for i in range(masters * (1 + replicas))]
        self.replicas = replicas

    @property
    def seeds(self) -> str:
        """REDIS_URL naming every node (comma-separated seeds)."""
        return ",".join(f"redis://127.0.0.1:{n.port}" for n in self.nodes)

    def url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}"

    def start(self, timeout: float = 60.0) -> RedisCluster:
        for node in self.nodes:
            self._spawn(node)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while self.cli_run(node.port, "ping").strip() != "PONG":
                if node.proc is not None and node.proc.poll() is not None:
                    # its port was taken meanwhile (by another test's server): another one
                    node.port = cluster_port()
                    self._spawn(node)
                self._check_deadline(deadline, f"node {node.port} did not start")
                time.sleep(0.05)
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run([self.cli, "--cluster", "create", *addresses, "--cluster-replicas",
                        str(self.replicas), "--cluster-yes"], check=True,
                       capture_output=True, timeout=timeout)
        self.wait_ok(timeout=timeout)
        self._wait_replicas_synced(deadline)
        return self

    def _wait_replicas_synced(self, deadline: float) -> None:
        """Until every master has its replicas and each replica's link to its master is up
        (a replica that never synced refuses to take over when its master dies)."""
        want = len(self.masters()) * self.replicas
        while True:
            synced = [n for n in self.nodes if n.running
                      and "master_link_status:up" in self.cli_run(n.port, "info", "replication")]
            if len(synced) >= want:
                return
            self._check_deadline(deadline, "replicas did not sync with their masters")
            time.sleep(0.1)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every running node says cluster_state:ok and agrees on 3 masters that own
        every slot."""
        deadline = time.monotonic() + timeout
        while not all("cluster_state:ok" in self.cli_run(n.port, "cluster", "info")
                      for n in self.nodes if n.running) or not self._slots_covered():
            self._check_deadline(deadline, "cluster did not reach state ok")
            time.sleep(0.1)

    def _slots_covered(self) -> bool:
        for node in self.nodes:
            if node.running:
                info = self.cli_run(node.port, "cluster", "info")
                return "cluster_slots_ok:16384" in info
        return False

    def masters(self) -> list[int]:
        """Ports of the masters that are up, as a running node sees them."""
        out: list[int] = []
        for line in self._nodes_lines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                out.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(out)

    def replicas_of(self, master_port: int) -> list[int]:
        lines = self._nodes_lines()
        ids = {int(f.split()[1].split("@")[0].rsplit(":", 1)[1]): f.split()[0] for f in lines}
        master_id = ids[master_port]
        return [int(f.split()[1].split("@")[0].rsplit(":", 1)[1]) for f in lines
                if f.split()[3] == master_id]

    def node_id(self, port: int) -> str:
        return self.cli_run(port, "cluster", "myid").strip()

    def master_of_slot(self, slot: int) -> int:
        for line in self._nodes_lines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                if span.startswith("["):
                    continue
                lo, _, hi = span.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"no master serves slot {slot}")

    def key_slot(self, key: str) -> int:
        return int(self.cli_run(self._any_port(), "cluster", "keyslot", key).strip())

    def migrate_slot(self, slot: int, to_port: int) -> None:
        """Move `slot` with all its keys to the master on `to_port` (the documented
        SETSLOT IMPORTING / MIGRATING, MIGRATE, SETSLOT NODE sequence)."""
        from_port = self.master_of_slot(slot)
        if from_port == to_port:
            return
        src, dst = self.node_id(from_port), self.node_id(to_port)
        self._ok(to_port, "cluster", "setslot", str(slot), "importing", src)
        self._ok(from_port, "cluster", "setslot", str(slot), "migrating", dst)
        while True:
            keys = self.cli_run(from_port, "cluster", "getkeysinslot", str(slot), "100").split()
            if not keys:
                break
            self._ok(from_port, "migrate", "127.0.0.1", str(to_port), "", "0", "5000",
                     "keys", *keys)
        for port in (to_port, from_port):
            self._ok(port, "cluster", "setslot", str(slot), "node", dst)
        for port in self.masters():
            if port not in (to_port, from_port):
                self.cli_run(port, "cluster", "setslot", str(slot), "node", dst)

    def kill(self, port: int) -> None:
        node = next(n for n in self.nodes if n.port == port)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)

    def wait_promoted(self, dead_master: int, replicas: list[int], timeout: float = 60.0) -> int:
        """The port of the replica that took over from `dead_master`, once the cluster is ok."""
        deadline = time.monotonic() + timeout
        while True:
            for port in replicas:
                role = self.cli_run(port, "role").split()
                if role and role[0] == "master":
                    self.wait_ok(timeout=max(deadline - time.monotonic(), 1.0))
                    return port
            self._check_deadline(deadline, f"no replica of {dead_master} was promoted")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=10)

    def cli_run(self, port: int, *args: str) -> str:
        try:
            done = subprocess.run([self.cli, "-p", str(port), *args], capture_output=True,
                                  timeout=10, text=True)
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout

    def _ok(self, port: int, *args: str) -> None:
        out = self.cli_run(port, *args).strip()
        if out not in ("OK", "NOKEY"):
            raise RuntimeError(f"{' '.join(args)} on {port}: {out!r}")

    def _any_port(self) -> int:
        return next(n.port for n in self.nodes if n.running)

    def _nodes_lines(self) -> list[str]:
        return [line for line in self.cli_run(self._any_port(), "cluster", "nodes").splitlines()
                if line.strip()]

    def _spawn(self, node: Node) -> None:
        node.workdir.mkdir(parents=True, exist_ok=True)
        log = (node.workdir / "redis.log").open("ab")
        try:
            node.proc = subprocess.Popen(
                [self.binary, "--port", str(node.port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{node.port}.conf",
                 "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(node.workdir),
                 "--loglevel", "warning"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()

    @staticmethod
    def _check_deadline(deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(what)
