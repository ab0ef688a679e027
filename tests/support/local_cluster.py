"""`ray up` on this machine: a private sshd on 127.0.0.1 plus configs/cluster-local.yaml filled in.

The Ray local provider reaches its "remote" head over ssh. Here the head is this machine, shared
with other Ray instances, so everything is private to one work folder:
- sshd listens on a free high port of 127.0.0.1 only, with its own host key, authorized key and
  HOME (`SetEnv HOME=`), so ray up's ~/ray_bootstrap_* files and ~/.bashrc stay in the folder;
- sshd runs in its own PID namespace (`unshare --pid`): the Ray head started over ssh lives there,
  so the `ray stop` that `ray down` always runs on the head can see, and stop, only this cluster;
  killing our `unshare` ends the namespace and anything left in it;
- Ray's ports are picked free outside its worker port range, and its temp dirs are in the folder.

Run as a module to bring the pieces up by hand: `python -m tests.support.local_cluster DIR`.
"""
from __future__ import annotations

import getpass
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "configs" / "cluster-local.yaml"
RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default worker port range: our fixed ports avoid it
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_PORT_NAMES = ("gcs_port", "dashboard_port", "client_port", "agent_listen_port", "agent_grpc_port",
               "runtime_env_agent_port", "metrics_port", "node_manager_port", "object_manager_port")


class ClusterSetupError(RuntimeError):
    """The private sshd or the cluster file could not be prepared; the message says which step."""


def missing_tools() -> list[str]:
    """Programs this cluster needs that are not installed (sshd and ssh, rsync for file_mounts, unshare)."""
    tools = {"sshd": "/usr/sbin/sshd", "ssh": "ssh", "ssh-keygen": "ssh-keygen", "rsync": "rsync",
             "unshare": "unshare"}
    return [name for name, exe in tools.items() if shutil.which(exe) is None]


def pid_namespace_available() -> bool:
    """True when this process may create a PID namespace (root, or a container that allows it)."""
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1, none inside Ray's worker port range."""
    ports: list[int] = []
    holders = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            holders.append(sock)  # held open until all are picked, so no port is handed out twice
            if port not in RAY_WORKER_PORTS:
                ports.append(port)
    finally:
        for sock in holders:
            sock.close()
    return ports


def render_cluster_file(template: Path, dest: Path, values: dict[str, object]) -> Path:
    """Fill every {{name}} of `template`; a placeholder without a value is an error, not a blank."""
    text = template.read_text()
    missing = sorted({name for name in _PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise ClusterSetupError(f"{template}: no value for placeholder(s) {', '.join(missing)}")
    dest.write_text(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text))
    return dest


@dataclass
class LocalCluster:
    """Paths, ports and the running sshd of one private local-provider cluster."""

    workdir: Path
    cluster_file: Path
    ssh_port: int
    ports: dict[str, int]
    sshd: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"fea-local-{self.workdir.name}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard_port']}"

    @property
    def home(self) -> Path:
        """HOME of the "remote" side: where ray up puts its bootstrap files and file_mounts land."""
        return self.workdir / "home"

    @property
    def temp_dir(self) -> Path:
        return self.workdir / "ray"

    def cli_env(self) -> dict[str, str]:
        """Environment for `ray up` / `ray down` / `ray job submit` run from this side.

        RAY_TMPDIR and TMPDIR keep the launcher's cluster state file and config cache in the work
        folder instead of the machine-wide /tmp/ray.
        """
        env = dict(os.environ)
        local_tmp = self.workdir / "launcher-tmp"
        local_tmp.mkdir(exist_ok=True)
        env.update(RAY_TMPDIR=str(local_tmp), TMPDIR=str(local_tmp), RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        return env


def _write_sshd_files(cluster: LocalCluster) -> Path:
    ssh_dir = cluster.workdir / "ssh"
    ssh_dir.mkdir(mode=0o700)
    for key in ("host_ed25519", "id_ray"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"fea-{key}",
                        "-f", str(ssh_dir / key)], check=True)
    shutil.copy(ssh_dir / "id_ray.pub", ssh_dir / "authorized_keys")
    config = ssh_dir / "sshd_config"
    config.write_text("\n".join([
        f"Port {cluster.ssh_port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {ssh_dir / 'host_ed25519'}",
        f"PidFile {ssh_dir / 'sshd.pid'}",
        f"AuthorizedKeysFile {ssh_dir / 'authorized_keys'}",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "AllowTcpForwarding yes",  # the cluster file's ProxyCommand jumps through this sshd
        f"SetEnv HOME={cluster.home}",
        "Subsystem sftp internal-sftp",
        "LogLevel INFO",
        "",
    ]))
    return config


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterSetupError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise ClusterSetupError(f"sshd did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s")


def start_cluster_sshd(workdir: Path, inputs_dir: Path, num_cpus: int = 2) -> LocalCluster:
    """Generate keys, start the private sshd in its own PID namespace and render the cluster file."""
    ssh_port, *ray_ports = free_ports(1 + len(_PORT_NAMES))
    cluster = LocalCluster(workdir=workdir, cluster_file=workdir / "cluster.yaml", ssh_port=ssh_port,
                           ports=dict(zip(_PORT_NAMES, ray_ports)))
    cluster.home.mkdir()
    (cluster.home / ".bashrc").touch()  # ray's ssh commands `source ~/.bashrc` before head setup writes it
    config = _write_sshd_files(cluster)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's compiled-in privilege separation dir
    render_cluster_file(TEMPLATE, cluster.cluster_file, {
        "cluster_name": cluster.name, "ssh_user": getpass.getuser(),
        "ssh_key": workdir / "ssh" / "id_ray", "ssh_port": ssh_port, "inputs_dir": inputs_dir,
        "venv_bin": Path(sys.executable).parent, "ray_tmpdir": workdir / "remote-tmp",
        "temp_dir": cluster.temp_dir, "num_cpus": num_cpus, **cluster.ports,
    })
    log = workdir / "ssh" / "sshd.log"
    with log.open("wb") as log_file:
        # --kill-child: when our unshare dies, its child (sshd, the namespace's init) is killed, and
        # with it every process of the namespace.
        cluster.sshd = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
             "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(ssh_port, cluster.sshd, log)
    except BaseException:
        stop_cluster_sshd(cluster)
        raise
    return cluster


def _ssh_control_dir(cluster_name: str) -> Path:
    """Where Ray's ssh runner keeps this cluster's ControlMaster sockets (a fixed path under /tmp)."""
    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    return Path("/tmp") / f"ray_ssh_{user}" / hashlib.sha256(cluster_name.encode()).hexdigest()[:10]


def stop_cluster_sshd(cluster: LocalCluster) -> None:
    """End the namespace: SIGKILL to our own `unshare` process takes sshd and all it started."""
    if cluster.sshd is not None and cluster.sshd.poll() is None:
        cluster.sshd.send_signal(signal.SIGKILL)
        cluster.sshd.wait(timeout=30)
    shutil.rmtree(_ssh_control_dir(cluster.name), ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.support.local_cluster NEW_WORK_DIR INPUTS_DIR", file=sys.stderr)
        return 2
    workdir = Path(argv[0]).resolve()
    workdir.mkdir(parents=True)
    cluster = start_cluster_sshd(workdir, Path(argv[1]).resolve())
    env = f"RAY_TMPDIR={workdir}/launcher-tmp TMPDIR={workdir}/launcher-tmp"
    (workdir / "launcher-tmp").mkdir()
    print(f"sshd on 127.0.0.1:{cluster.ssh_port}; cluster file {cluster.cluster_file}\n"
          f"  {env} ray up -y {cluster.cluster_file}\n"
          f"  ray job submit --address {cluster.dashboard_url} --working-dir {REPO_ROOT} -- fea synth ...\n"
          f"  {env} ray down -y {cluster.cluster_file}\n"
          "Ctrl-C stops sshd and everything the cluster started.")
    try:
        cluster.sshd.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_cluster_sshd(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
