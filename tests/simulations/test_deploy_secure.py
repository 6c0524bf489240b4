"""Secure deployment: the credentials script, and a TLS SuperLink with SuperNode authentication on loopback.

The slow tests start real Flower processes on 127.0.0.1 (FEDCOND_SLOW=1, as .ci/run sets): the
loopback script end to end with ``--secure``, and a SuperLink that must refuse a SuperNode whose
key is not registered and a SuperNode that connects without TLS, while a registered one joins.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.simulations.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "simulations" / "deploy_local.sh"

SLOW_MARKS = (
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("FEDCOND_SLOW") != "1",
                       reason="starts a SuperLink and SuperNodes on loopback; set FEDCOND_SLOW=1 to run it"),
    pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's CLI is not on PATH"),
)


def slow(test):
    for mark in SLOW_MARKS:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def credentials_module():
    return load_script("make_credentials")


# --- the credentials script (fast) ---------------------------------------------------------------

def test_credentials_chain_sans_node_keys_and_private_modes(credentials_module, tmp_path):
    out = tmp_path / "certs"
    written = credentials_module.make_credentials(out, nodes=2, hosts=["127.0.0.1", "link.example.org"], days=1)

    assert sorted(p.name for p in written) == sorted(
        ["ca.crt", "ca.key", "server.pem", "server.key",
         "supernode-0.key", "supernode-0.pub", "supernode-1.key", "supernode-1.pub"])
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.suffix == ".key":
            assert mode == 0o600, path
        else:
            assert mode & 0o077 != 0o077 and not mode & 0o022, path  # public files: readable, not writable by others
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["link.example.org"]
    server_key = serialization.load_pem_private_key((out / "server.key").read_bytes(), password=None)
    assert server_key.public_key() == server.public_key()
    # node keys in the formats flower-supernode and `flwr supernode register` read (OpenSSH, NIST P-384)
    node_key = serialization.load_ssh_private_key((out / "supernode-0.key").read_bytes(), password=None)
    node_public = serialization.load_ssh_public_key((out / "supernode-0.pub").read_bytes())
    assert node_key.curve.name == "secp384r1" and node_key.public_key() == node_public
    other = serialization.load_ssh_public_key((out / "supernode-1.pub").read_bytes())
    assert other != node_public


def test_credentials_refuse_a_folder_holding_anything_and_bad_numbers(credentials_module, tmp_path):
    (tmp_path / "ca.key").write_text("the CA key of a running federation")
    with pytest.raises(ValueError, match="not empty"):
        credentials_module.make_credentials(tmp_path, nodes=1, hosts=["127.0.0.1"], days=1)
    assert (tmp_path / "ca.key").read_text() == "the CA key of a running federation"
    with pytest.raises(ValueError, match="--nodes"):
        credentials_module.make_credentials(tmp_path / "a", nodes=-1, hosts=["127.0.0.1"], days=1)
    with pytest.raises(ValueError, match="--days"):
        credentials_module.make_credentials(tmp_path / "b", nodes=1, hosts=["127.0.0.1"], days=0)
    with pytest.raises(ValueError, match="--host"):
        credentials_module.make_credentials(tmp_path / "c", nodes=1, hosts=[], days=1)
    assert credentials_module.main(["--out", str(tmp_path), "--nodes", "1"]) == 2


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_deploy_script_refuses_a_bad_node_count_before_starting_anything(tmp_path, bad):
    env = {**os.environ, "FEDCOND_DEPLOY_DIR": str(tmp_path / "deploy")}
    done = subprocess.run([str(DEPLOY), "--secure", bad], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "N must be a positive number" in done.stderr
    assert not (tmp_path / "deploy").exists()


# --- loopback deployments (slow) -----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _base_port(count: int) -> int:
    """A port p with p .. p+count free on 127.0.0.1 (checked, not reserved)."""
    for _ in range(50):
        base = _free_port()
        if base + count >= 65535:
            continue
        try:
            for offset in range(count + 1):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports on 127.0.0.1")


def _flower_env(home: Path) -> dict[str, str]:
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("wb") as handle:
        return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _signal(proc: subprocess.Popen, others: list, sig: int) -> None:
    for send, target in [(os.killpg, proc.pid), *((os.kill, other.pid) for other in others)]:
        try:
            send(target, sig)
        except ProcessLookupError:
            pass


def _stop(proc: subprocess.Popen) -> None:
    """Stop ``proc``, its process group and whatever it started in sessions of their own."""
    import psutil  # installed with flwr[simulation]

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    _signal(proc, tree, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    _, alive = psutil.wait_procs(tree, timeout=5)
    if proc.poll() is None or alive:
        _signal(proc, alive, signal.SIGKILL)
        proc.wait(timeout=5)
        psutil.wait_procs(alive, timeout=5)


def _wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _node_id_in(log: Path) -> int | None:
    """The node id a SuperNode logged on joining, or None when it never got one."""
    for line in log.read_text(errors="replace").splitlines():
        if "SuperNode ID:" in line:
            return int(line.rsplit(":", 1)[1])
    return None


class TlsSuperLink:
    """A SuperLink with TLS and SuperNode authentication on 127.0.0.1, and the files to reach it."""

    def __init__(self, root: Path, credentials_module) -> None:
        self.root = root
        self.certs = root / "certs"
        credentials_module.make_credentials(self.certs, nodes=2, hosts=["127.0.0.1", "localhost"], days=1)
        self.home = root / "flwr-home"
        self.home.mkdir()
        self.env = _flower_env(self.home)
        self.port = _base_port(4)  # the SuperLink's, then one per SuperNode's Runtime API
        self.nodes: list[subprocess.Popen] = []
        self.link = _start(
            ["flower-superlink", "--ssl-ca-certfile", str(self.certs / "ca.crt"),
             "--ssl-certfile", str(self.certs / "server.pem"), "--ssl-keyfile", str(self.certs / "server.key"),
             "--enable-supernode-auth", "--isolation", "subprocess", "--host", "127.0.0.1",
             "--port", str(self.port), "--database", str(root / "state.db"),
             "--disable-runtime-dependency-installation"],
            root / "superlink.log", self.env)
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "tls"\n\n[superlink.tls]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs / "ca.crt"}"\n')
        _wait_for(self._healthy, timeout=60, what="the SuperLink's health endpoint over TLS")

    def _healthy(self) -> bool:
        import ssl
        import urllib.request

        if self.link.poll() is not None:
            raise AssertionError("the SuperLink exited:\n" + (self.root / "superlink.log").read_text()[-3000:])
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health", timeout=1, context=context)
        except OSError:
            return False
        return True

    def flwr(self, *args: str) -> dict:
        done = subprocess.run(["flwr", "supernode", *args, "tls", "--format", "json"], env=self.env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout[done.stdout.index("{"):])

    def node_ids(self) -> dict[int, str]:
        return {int(node["node-id"]): node["status"] for node in self.flwr("list")["nodes"]}

    def supernode(self, name: str, *security: str) -> tuple[subprocess.Popen, Path]:
        log = self.root / f"{name}.log"
        proc = _start(["flower-supernode", *security, "--isolation", "subprocess",
                       "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
                       "--port", str(self.port + 1 + len(self.nodes))], log, self.env)
        self.nodes.append(proc)
        return proc, log

    def close(self) -> None:
        for proc in [*self.nodes, self.link]:
            _stop(proc)


@pytest.fixture(scope="module")
def tls_superlink(tmp_path_factory, credentials_module) -> Iterator[TlsSuperLink]:
    link = TlsSuperLink(tmp_path_factory.mktemp("tls-superlink"), credentials_module)
    try:
        yield link
    finally:
        link.close()



@slow
def test_only_a_registered_supernode_over_tls_gets_a_node_id(tls_superlink):
    registered = tls_superlink.flwr("register", str(tls_superlink.certs / "supernode-0.pub"))["node-id"]
    certs = tls_superlink.certs
    member, member_log = tls_superlink.supernode(
        "registered", "--root-certificates", str(certs / "ca.crt"),
        "--auth-supernode-private-key", str(certs / "supernode-0.key"))
    stranger, stranger_log = tls_superlink.supernode(
        "unregistered", "--root-certificates", str(certs / "ca.crt"),
        "--auth-supernode-private-key", str(certs / "supernode-1.key"))

    _wait_for(lambda: _node_id_in(member_log) is not None, timeout=60, what="the registered SuperNode's node id")
    assert _node_id_in(member_log) == registered
    assert stranger.wait(timeout=60) != 0
    assert _node_id_in(stranger_log) is None
    assert "Failed to activate SuperNode" in stranger_log.read_text(errors="replace")
    _wait_for(lambda: tls_superlink.node_ids().get(registered) == "online", timeout=30,
              what="the registered SuperNode to be online")
    assert set(tls_superlink.node_ids()) == {registered}  # the SuperLink knows the registered node only
    assert member.poll() is None  # and that one stays connected


@slow
def test_a_supernode_without_tls_or_without_a_key_never_gets_a_node_id(tls_superlink):
    before = tls_superlink.node_ids()
    # plain HTTP to the TLS port (bounded retries, so that the refusal ends the process) ...
    plain, plain_log = tls_superlink.supernode("plain", "--insecure", "--max-retries", "1", "--max-wait-time", "20")
    # ... and TLS without a key: it would register itself, which authentication forbids
    root_certificate = str(tls_superlink.certs / "ca.crt")
    keyless, keyless_log = tls_superlink.supernode("keyless", "--root-certificates", root_certificate)

    assert plain.wait(timeout=60) != 0
    assert keyless.wait(timeout=60) != 0
    assert _node_id_in(plain_log) is None
    assert "Failed to initialize the connection to the SuperLink" in plain_log.read_text(errors="replace")
    assert _node_id_in(keyless_log) is None
    assert "must be registered" in keyless_log.read_text(errors="replace")
    assert tls_superlink.node_ids() == before


@slow
def test_secure_loopback_deployment_reaches_metrics(tmp_path):
    deploy = tmp_path / "deploy"
    env = {**os.environ, "FEDCOND_DEPLOY_DIR": str(deploy), "FEDCOND_DEPLOY_TIMEOUT": "240"}
    done = subprocess.run(
        [str(DEPLOY), "--secure", "2", "distill.ipc=1", "distill.iterations=2", 'distill.init="noise"',
         "server-epochs=2", 'device="cpu"'],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "TLS + SuperNode authentication" in done.stdout
    metrics = json.loads((deploy / "result" / "metrics.json").read_text())
    # both SuperNodes took part: what the app then accepts is its own business (tested elsewhere)
    assert metrics["num_clients"] == 2 and metrics["history"][1]["replies_received"] == 2
    link_log = (deploy / "logs" / "superlink.log").read_text(errors="replace")
    assert "https://127.0.0.1" in link_log  # the SuperLink served TLS
    registered, joined = set(), set()
    for i in range(2):  # each node joined under the node id its registered key was given
        register_log = (deploy / "logs" / f"register-{i}.log").read_text()
        registered.add(int(register_log.split("SuperNode ", 1)[1].split()[0]))
        joined.add(_node_id_in(deploy / "logs" / f"supernode-{i}.log"))
        assert stat.S_IMODE((deploy / "certs" / f"supernode-{i}.key").stat().st_mode) == 0o600
    assert len(registered) == 2 and joined == registered
    # the script stopped what it started, Flower's detached SuperExec (named by the CA path) included
    left = subprocess.run(["pgrep", "-f", str(deploy)], capture_output=True, text=True)
    assert left.stdout.strip() == ""
