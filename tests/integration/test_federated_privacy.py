"""Federated privacy in deployment (issue 22), on loopback:

- TLS and SuperNode authentication: certificates and node keys generated for the test; the SuperLink serves TLS
  only and accepts only registered node keys; a SuperNode with an unregistered key is refused, the run finishes on
  the two registered ones.
- The acceptance (slow tier): TLS, authenticated SuperNodes and SecAgg+ on 3 SuperNodes, one SIGKILLed when its
  first SecAgg+ message arrives, ``min_sites: 2``: the run finishes on the two others, whose masks cancel without
  the dead one, the dead site is named by its site name, and the model equals plain FedAvg of the same two sites
  (in process, no SecAgg) within SecAgg+'s quantization.

    .venv/bin/pytest tests/integration/test_federated_privacy.py
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from safetensors.numpy import load_file

from components.federated.inprocess import run_in_process
from components.federated.settings import FedSettings
from components.federated.tasks import SiteRef, make_task
from tests.integration.conftest import BIN, free_port
from tests.integration.test_federated import CONNECTION, SETTINGS, Cluster, cluster  # noqa: F401, F811 (the fixture)

pytestmark = pytest.mark.integration

SECURE: dict[str, Any] = {**SETTINGS, "secure_aggregation": True, "clip_norm": 0.1, "max_examples": 400,
                          "round_timeout": 40.0}  # fmt: skip


def _tls_material(d: Path, nodes: list[str]) -> None:
    """A CA, the SuperLink's certificate for 127.0.0.1 (PEM), and one ECDSA P-384 key pair per name in ``nodes``
    (OpenSSH, Flower's format: ``<name>`` and ``<name>.pub``)."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(hours=2))
    ca_key, key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medtune test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(names), critical=False).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem, none = serialization.Encoding.PEM, serialization.NoEncryption()
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "server.pem").write_bytes(cert.public_bytes(pem))
    (d / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, none))
    for name in nodes:
        node = ec.generate_private_key(ec.SECP384R1())
        (d / name).write_bytes(node.private_bytes(pem, serialization.PrivateFormat.OpenSSH, none))
        ssh = serialization.Encoding.OpenSSH
        (d / f"{name}.pub").write_bytes(node.public_key().public_bytes(ssh, serialization.PublicFormat.OpenSSH))


def _secure_cluster(
    cluster: Cluster,  # noqa: F811
    tls: Path,
    nodes: list[str],
    register: list[str],
    warm: tuple[str, ...] = (),
) -> None:
    """A SuperLink serving TLS only with SuperNode authentication on; the node keys in ``register`` registered over
    TLS with ``flwr supernode register``; one SuperNode per name in ``nodes`` (site i = the i-th), each with its
    own key; those in ``warm`` started with medtune's launcher and ``--warm``, the others with Flower's command."""
    tls.mkdir()
    _tls_material(tls, [*dict.fromkeys([*nodes, *register])])
    home = Path(cluster.env["FLWR_HOME"])
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{cluster.port}"\nroot-certificates = "{tls / "ca.crt"}"\n'
    )  # TLS: no `insecure`
    cluster._start(
        "superlink",
        [str(BIN / "flower-superlink"), "--port", str(cluster.port), "--ssl-ca-certfile", str(tls / "ca.crt"),
         "--ssl-certfile", str(tls / "server.pem"), "--ssl-keyfile", str(tls / "server.key"),
         "--enable-supernode-auth", "--disable-runtime-dependency-installation"],
    )  # fmt: skip
    for i, key in enumerate(register):
        for _ in range(60 if i == 0 else 1):  # registering the first key also proves the Control API answers
            reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(tls / f"{key}.pub"), CONNECTION],
                                 env=cluster.env, capture_output=True, text=True, timeout=60)  # fmt: skip
            if "registered successfully" in reg.stdout:
                break
            assert cluster.procs["superlink"].poll() is None, cluster.log("superlink")
            time.sleep(1)
        assert "registered successfully" in reg.stdout, f"could not register {key}: {reg.stdout[-2000:]}{reg.stderr}"
    for pid, key in enumerate(nodes):
        command = (
            [str(BIN / "python"), "-m", "components.federated.launch", "supernode", "--warm"]
            if key in warm
            else [str(BIN / "flower-supernode")]
        )
        cluster._start(
            f"node{pid}",
            [*command, "--superlink", f"127.0.0.1:{cluster.port}", "--root-certificates",
             str(tls / "ca.crt"), "--auth-supernode-private-key", str(tls / key), "--port", str(free_port()),
             "--node-config", f"partition-id={pid} num-partitions={len(nodes)}", "--max-wait-time", "60"],
        )  # fmt: skip


def test_tls_and_authenticated_supernodes_refuse_an_unregistered_node(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    # good-1 is a warm SuperNode (medtune's worker runs its ClientApp): TLS and node auth are the SuperNode's own
    _secure_cluster(cluster, tmp_path / "tls", ["good-0", "good-1", "evil"], register=["good-0", "good-1"],
                    warm=("good-1",))  # fmt: skip
    out = tmp_path / "out"
    settings = {**SETTINGS, "method": "fedavg_full", "rounds_sparse": 0, "rounds_lora": 1, "local_steps": 2,
                "node_wait_timeout": 30.0}  # fmt: skip
    result = cluster.run(out, timeout=300, **settings)
    where = f"flwr run exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    assert (out / "history.json").is_file(), where + "\nsuperlink log:\n" + cluster.log("superlink")
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "finished", history["error"] + "\n" + where
    assert [sorted(r["accepted"]) for r in history["rounds"]] == [["site-0", "site-1"]]
    assert sorted(history["final"]) == ["site-0", "site-1"]  # the unregistered site-2 never took part
    assert "No SuperNode found with the given public key" in cluster.log("superlink")
    logs = [(tmp_path / f"node{i}.log").read_text(errors="replace") for i in (0, 1)]
    assert "(warm)" in logs[1] and "(warm)" not in logs[0]


@pytest.mark.slow
def test_secagg_plus_over_tls_and_node_auth_survives_a_killed_site(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    """Issue 22's acceptance: TLS, authenticated SuperNodes and SecAgg+ on 3 sites, site-2 SIGKILLed when SecAgg+'s
    first message reaches it, ``min_sites: 2``: the run finishes, site-2 is named (by its site, which it never
    reported in a training reply) in the history and the streamed log, and the model equals plain FedAvg of the
    same rounds over the two survivors, in the clear."""
    keys = ["site-a", "site-b", "site-c"]
    _secure_cluster(cluster, tmp_path / "tls", keys, register=keys)
    out = tmp_path / "out"
    # node 2 dies once SecAgg+'s first (setup) message reaches it
    watcher, killed = cluster.kill_on("node2", "Receiving: train message")
    result = cluster.run(out, timeout=420, **SECURE)
    watcher.join(timeout=5)
    assert "at" in killed, "node 2 never received a SecAgg+ message"
    history_path = out / "history.json"
    where = f"flwr run exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert history_path.is_file(), where + "\nsuperlink log:\n" + cluster.log("superlink")
    history = json.loads(history_path.read_text())
    assert history["status"] == "finished", history["error"] + "\n" + where
    assert [sorted(r["accepted"]) for r in history["rounds"]] == [["site-0", "site-1"]] * 2
    assert history["settings"]["secure_aggregation"] is True
    first = history["rounds"][0]
    assert list(first["rejected"]) == ["site-2"] and "dropped out of the SecAgg+ round" in first["rejected"]["site-2"]
    assert first["missing"] == 0
    assert "site-2 dropped out of the SecAgg+ round" in result.stdout + result.stderr, where
    assert "No SuperNode found" not in cluster.log("superlink")  # every node authenticated
    # plain FedAvg of the two surviving sites, same settings, in process and in the clear
    plain = FedSettings(**{**SECURE, "secure_aggregation": False})
    tasks = [make_task("mlp", {"seed": plain.seed, **plain.task_args}, SiteRef(i, 3)) for i in range(2)]
    reference = run_in_process(plain, tasks).final_deltas()
    got = load_file(str(out / "final.safetensors"))
    assert set(got) == set(reference)
    for key, want in reference.items():
        np.testing.assert_allclose(got[key], want, atol=2e-6)


def test_superlink_starts_without_the_venv_on_path(tmp_path: Path) -> None:
    """Flower's own `flower-superlink` cannot start its `flower-superexec` unless the venv is on PATH; medtune's
    launcher can."""
    import os
    import socket

    env = {**os.environ, "PATH": "/usr/bin:/bin", "FLWR_HOME": str(tmp_path / "flwr"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}  # fmt: skip
    flags = ["--insecure", "--disable-runtime-dependency-installation"]

    def start(cmd: list[str], name: str) -> tuple[subprocess.Popen[bytes], int, Path]:
        port, log = free_port(), tmp_path / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([*cmd, *flags, "--port", str(port)], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        return proc, port, log

    def listening(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    flower, _, flower_log = start([str(BIN / "flower-superlink")], "flower")
    ours, port, ours_log = start([str(BIN / "python"), "-m", "components.federated.launch", "superlink"], "ours")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (listening(port) and "SuperExec" in ours_log.read_text()):
            assert ours.poll() is None, ours_log.read_text()[-3000:]
            time.sleep(0.3)
        time.sleep(3)  # the SuperExec is started at this point; a missing one fails the start-up
        assert ours.poll() is None and listening(port), ours_log.read_text()[-3000:]
        assert "flower-superexec" not in ours_log.read_text()
        flower.wait(timeout=60)  # Flower's own command exits: it cannot find flower-superexec
        assert "No such file or directory: 'flower-superexec'" in flower_log.read_text()
    finally:
        for proc in (flower, ours):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
