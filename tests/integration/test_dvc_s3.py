"""PHI never leaves the intake (issue 18), and DVC remotes on S3: one smoke `medtune run` with an S3 remote on
moto's ThreadedMotoServer (the S3 HTTP API on 127.0.0.1), credentials only in the environment.

The intake holds DICOM files with PHI in their headers (every attribute the de-identification library covers,
private tags, sequences), in folder and file names (several spellings, a non-DICOM file, an unreadable header,
a folder no source reads), in a free-text attribute and burned into the pixels (pydicom's
``examples_rgb_color.dcm``). After the run and a push, none of the PHI strings is found in any S3 object, the
DVC cache, the state folder (MLflow store and artifacts, Prefect, DVC's indexes; ``secrets/`` holds the key and
the pseudonym map by design), ``reports/``, ``data/`` outside the intake area, or the console; the de-identified
ultrasound's pixels show no text. Then a new machine pulls the same bytes back.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.integration.conftest import assert_offline, cli_env, medtune
from tests.unit.data.helpers import every_table_attribute_dicom, write_phi_dicom

pytestmark = pytest.mark.integration

SECRET = "medtune-test-secret-key-0123456789"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: Names planted in paths and free text (invented; none occurs in medtune, pydicom or the smoke data).
NAMES = ("Ravensworth", "Delphine", "Quenby", "Atherton", "Oakhurst", "Penelope", "Fennimore", "Halloway")


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="medtune-test",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="medtune-data")
    try:
        yield endpoint
    finally:
        server.stop()


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _plant_intake(ws: Path) -> list[str]:
    """Identified files in data/intake/hospital (and one folder no source reads); returns the PHI strings."""
    intake = ws / "data" / "intake" / "hospital"
    phi: list[str] = list(NAMES)
    phi += write_phi_dicom(
        intake / "Ravensworth_Delphine" / "Ravensworth_Delphine_ct.dcm",
        name="Ravensworth^Delphine",
        patient_id="MRN-55501234",
        extra={"BodyPartExamined": "Fennimore"},  # free text: a word standing for a name
    )
    phi += write_phi_dicom(  # the same patient under an upper-case folder
        intake / "RAVENSWORTH_DELPHINE" / "scan2.dcm", name="Ravensworth^Delphine", patient_id="MRN-55501234"
    )
    phi += write_phi_dicom(  # spaces and lower case in the file name; another patient
        intake / "halloway quenby mr.dcm",
        base=PYDICOM_FILES / "MR_small.dcm",
        name="Halloway^Quenby",
        patient_id="MRN-55509876",
    )
    raw, _, every, _ = every_table_attribute_dicom()  # every attribute of the PS3.15 table, private tags, sequences
    (intake / "Ravensworth_Delphine" / "all_attributes.dcm").write_bytes(raw)
    phi += every
    (intake / "Ravensworth_Delphine" / "Ravensworth_Delphine_referral.txt").write_text(
        "Referral for Delphine Ravensworth, MRN-55501234.\n"
    )
    whole = (PYDICOM_FILES / "CT_small.dcm").read_bytes()
    (intake / "Quenby-Atherton_unreadable.dcm").write_bytes(whole[:300])  # cut inside the header
    # burned-in text: "BAPTIST MED CTR", an id and times along the top; no BurnedInAnnotation attribute
    us = pydicom.dcmread(PYDICOM_FILES / "examples_rgb_color.dcm")
    us.PatientName, us.PatientID = "Ravensworth^Delphine", "MRN-55501234"
    us.save_as(intake / "Ravensworth_Delphine" / "Ravensworth_Delphine_echo.dcm")
    phi += ["BAPTIST", "MRN-55501234", "55501234", "55509876"]
    stray = ws / "data" / "intake" / "Oakhurst_Penelope"
    stray.mkdir(parents=True)
    (stray / "Oakhurst_Penelope.dcm").write_bytes(whole)
    return sorted({str(p) for p in phi if len(str(p)) >= 5})


def _leaks(data: bytes, phi: list[str]) -> list[str]:
    low = data.lower()
    return [p for p in phi if p.lower().encode() in low or p.lower().encode("latin-1", "replace") in low]


def test_phi_never_leaves_the_intake_and_s3_round_trip(make_workspace, netguard, s3_endpoint: str) -> None:
    import boto3

    from components.data.burned_in import find_text

    ws = make_workspace()
    phi = _plant_intake(ws)
    env = cli_env(
        netguard,
        AWS_ACCESS_KEY_ID="medtune-test",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        MEDTUNE_DEID_KEY="medtune-s3-test-deid-key-0123456789",
    )
    s3_cfg = [
        "dvc.remote=s3",
        "dvc.s3.bucket=medtune-data",
        "dvc.s3.prefix=team/dvc",
        f"dvc.s3.endpoint_url={s3_endpoint}",
    ]
    small = ["--config", "configs/smoke.yaml", "data.sources.hospital={kind: dicom, path: data/raw/hospital}"]
    run = medtune(["run", *small, *s3_cfg], ws, env)
    assert run.returncode == 0, run.output
    assert "intake: hospital: de-identified 5 of 7 files" in run.stdout, run.stdout
    assert "1 masked" in run.stdout and run.output.count("intake: quarantined") == 3, run.output
    built = _digest(ws / "data" / "vlhealth")
    raw = _digest(ws / "data" / "raw")
    push = medtune(["data", "push", *small, *s3_cfg], ws, env)
    assert push.returncode == 0, push.output

    # the de-identified raw tree: pseudonymised names only, and the ultrasound's burned-in text masked
    folder = ws / "data" / "raw" / "hospital"
    raw_files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert len(raw_files) == 5 and all(f.startswith("pt-") and "/f-" in f for f in raw_files), raw_files
    echo = next(ds for ds in (pydicom.dcmread(folder / f) for f in raw_files) if ds.get("Modality") == "US")
    assert echo.BurnedInAnnotation == "NO" and not find_text(echo.pixel_array)

    # nothing identified anywhere outside the intake area and the secrets beside the key
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="medtune-test",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="medtune-data").get("Contents", [])]
    assert keys and all(k.startswith("team/dvc/files/md5/") for k in keys)
    for key in keys:
        body = s3.get_object(Bucket="medtune-data", Key=key)["Body"].read()
        assert not _leaks(body + key.encode(), phi), (key, _leaks(body, phi))
    intake, secrets = ws / "data" / "intake", ws / ".medtune" / "secrets"
    scanned = 0
    for path in ws.rglob("*"):
        if ".git" in path.relative_to(ws).parts[:1] or path.is_relative_to(intake) or path.is_relative_to(secrets):
            continue
        found = _leaks(str(path.relative_to(ws)).encode(), phi)
        if path.is_file() and not path.is_symlink():
            found += _leaks(path.read_bytes(), phi)
            scanned += 1
        assert not found, (path.relative_to(ws), found)
    assert scanned > 100  # the DVC cache, MLflow's store and artifacts, Prefect's database, reports, data
    assert not _leaks((run.output + push.output).encode(), phi), _leaks((run.output + push.output).encode(), phi)

    # a new machine: no cache, no data; only git's files and the remote
    for folder in (ws / ".dvc" / "cache", ws / "data" / "vlhealth", ws / "data" / "raw", intake):
        shutil.rmtree(folder)
    pull = medtune(["data", "pull", *small, *s3_cfg], ws, env)
    assert pull.returncode == 0, pull.output
    assert _digest(ws / "data" / "vlhealth") == built
    assert _digest(ws / "data" / "raw") == raw

    # credentials stay in the environment: not in DVC's config, not in medtune's state or params
    for path in [ws / ".dvc" / "config", ws / ".dvc" / "config.local", ws / "params.yaml"]:
        assert SECRET not in path.read_text()
    for path in (ws / ".medtune").rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path
    assert_offline(netguard)
