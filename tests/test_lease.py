"""One writer per output: the lease `_lease.json`, locally and on S3 (moto server)."""

import json
import threading
import time
from types import SimpleNamespace

import pytest
import gcs_support  # noqa: F401  (sets the gcsfs environment before gcsfs is imported)
from dask_support import blobs, dask_client  # noqa: F401
from io_support import write_parquet
from s3_support import create_bucket

from kmeans_partition.runner import lease as lease_module
from kmeans_partition.runner.lease import LEASE, Lease, LeaseError
from kmeans_partition.runner.output import open_output
from kmeans_partition.runner.stage import KMeansStage


@pytest.fixture(scope="module")
def gcs_server():
    """gcp-storage-emulator behind a proxy that enforces ``ifGenerationMatch`` (the emulator
    ignores it: see `gcs_support._PreconditionProxy`)."""
    pytest.importorskip("gcsfs")
    pytest.importorskip("gcp_storage_emulator")
    with gcs_support.gcs_server_with_preconditions("lease") as server:
        yield server


@pytest.fixture(params=["local", "s3", "gcs"])
def location(request, tmp_path):
    if request.param == "local":
        return open_output(str(tmp_path / "out"), {})
    if request.param == "gcs":
        _, options = request.getfixturevalue("gcs_server")
        return open_output(f"gs://lease/{request.node.name.replace('[', '-').replace(']', '')}", options)
    endpoint, options = request.getfixturevalue("s3_server")
    bucket = create_bucket(endpoint, "lease")
    return open_output(f"{bucket}/{request.node.name.replace('[', '-').replace(']', '')}", options)


def _holder(location):
    return json.loads(location.fs.cat_file(location.path(LEASE)))


def test_second_taker_is_refused_naming_the_holder(location):
    first = Lease(location, "uid-1", 60)
    first.take()
    second = Lease(location, "uid-2", 60)
    with pytest.raises(LeaseError, match=rf"another run: run {first.holder.run_id} \(resource uid uid-1, host .*pid"):
        second.take()
    assert _holder(location)["run_id"] == first.holder.run_id
    first.release()
    assert not location.fs.exists(location.path(LEASE))
    second.take()  # free again
    assert _holder(location)["run_id"] == second.holder.run_id
    second.release()


def test_racing_takers_get_one_lease(location):
    won, errors = _race(location, lambda lease: lease.take())
    assert not errors and len(won) == 1 and _holder(location)["run_id"] == won[0].holder.run_id
    won[0].release()


def test_racing_takers_of_an_expired_lease_get_one_lease(location):
    Lease(location, "uid-dead", 0.01).take()
    time.sleep(0.1)
    won, errors = _race(location, lambda lease: lease.take())
    assert not errors and len(won) == 1 and _holder(location)["run_id"] == won[0].holder.run_id
    won[0].release()


def _race(location, action, n=6):
    leases = [Lease(location, f"uid-{i}", 60) for i in range(n)]
    won, errors, barrier = [], [], threading.Barrier(n)

    def take(lease):
        barrier.wait()
        try:
            action(lease)
            won.append(lease)
        except LeaseError:
            pass
        except Exception as err:  # noqa: BLE001 - reported by the test
            errors.append(err)

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won, errors


def _advance_lease_clock(monkeypatch, seconds: float) -> None:
    """Move the lease module's clock ahead: expiry without sleeping, whatever the store's latency."""
    real = lease_module.time
    monkeypatch.setattr(lease_module, "time", SimpleNamespace(time=lambda: real.time() + seconds, sleep=real.sleep))


def test_expired_lease_is_taken_over_and_the_old_holder_loses_it(location, monkeypatch):
    old = Lease(location, "uid-1", 60)
    old.take()
    with pytest.raises(LeaseError):
        Lease(location, "uid-2", 60).take()
    _advance_lease_clock(monkeypatch, 61)
    new = Lease(location, "uid-2", 60)
    new.take()
    assert new.taken_over is not None and new.taken_over.run_id == old.holder.run_id
    with pytest.raises(LeaseError, match=f"was taken by run {new.holder.run_id}"):
        old.check()  # before its manifest commit, the old run finds out
    old.release()  # does not delete the new holder's lease
    assert _holder(location)["run_id"] == new.holder.run_id
    new.release()


def test_same_resource_takes_over_its_own_live_lease(location):
    """A Job starts the next pod after the last one failed: its lease (not yet expired) is ours."""
    dead = Lease(location, "uid-1", 600)
    dead.take()
    retry = Lease(location, "uid-1", 600)
    retry.take()
    assert retry.taken_over.run_id == dead.holder.run_id
    retry.release()
    anonymous = Lease(location, None, 600)  # two CLI runs (no uid) never count as the same owner
    anonymous.take()
    with pytest.raises(LeaseError):
        Lease(location, None, 600).take()
    anonymous.release()


def test_renewal_keeps_the_lease_alive(location):
    lease = Lease(location, "uid-1", 1.5)  # renewed every 0.5 s: a slow store still renews in time
    lease.take()
    lease.start_renewing()
    time.sleep(3.5)  # more than twice its lifetime
    assert _holder(location)["expires"] > time.time()
    with pytest.raises(LeaseError):
        Lease(location, "uid-2", 60).take()
    lease.check()
    lease.release()
    assert lease.lost is None


def test_run_on_a_held_output_fails_before_any_work(tmp_path, dask_client):  # noqa: F811
    (tmp_path / "in").mkdir()
    write_parquet(tmp_path / "in" / "a.parquet", blobs(200, 8, 3, seed=1))
    out = open_output(str(tmp_path / "out"), {})
    holder = Lease(out, "uid-other", 60)
    holder.take()
    stage = KMeansStage(n_clusters=3, id_field="id", embedding_field="embedding",
                        input_path=str(tmp_path / "in"), output_path=str(tmp_path / "out"), overwrite=True)
    with pytest.raises(LeaseError, match=f"being written by another run: run {holder.holder.run_id}"):
        stage.run(client=dask_client)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LEASE]
    holder.release()
    assert stage.run(client=dask_client)["n_rows"] == 200
    assert not (tmp_path / "out" / LEASE).exists()


def test_a_run_whose_lease_was_taken_deletes_nothing_and_commits_nothing(tmp_path, monkeypatch):
    from kmeans_partition.runner.guard import OutputGuard
    from kmeans_partition.spec import parse_job_spec

    out = tmp_path / "out"
    (out / "centroid=0").mkdir(parents=True)
    (out / "centroid=0" / "part-00000.parquet").write_bytes(b"previous")
    (out / "_manifest.json").write_text("{}")
    monkeypatch.setenv("KMP_LEASE_SECONDS", "0.3")
    spec = parse_job_spec({"n_clusters": 2, "id_field": "id", "embedding_field": "e",
                           "input_path": str(tmp_path / "in"), "output_path": str(out), "overwrite": True})
    guard = OutputGuard.prepare(spec)
    assert guard.replace == ["_manifest.json", "centroid=0/part-00000.parquet"]
    guard.lease._stop.set()  # as if the runner stalled and stopped renewing
    time.sleep(0.5)
    thief = Lease(guard.out, "uid-other", 60)
    thief.take()
    with pytest.raises(LeaseError, match=f"taken by run {thief.holder.run_id}"):
        guard.clear_previous()
    with pytest.raises(LeaseError):
        guard.commit()
    assert (out / "centroid=0" / "part-00000.parquet").read_bytes() == b"previous"
    guard.close()
    assert _holder(guard.out)["run_id"] == thief.holder.run_id
    thief.release()


def test_an_output_that_is_a_file_is_named_before_any_lease(tmp_path):
    from kmeans_partition.runner.guard import OutputGuard
    from kmeans_partition.runner.output import OutputError
    from kmeans_partition.spec import parse_job_spec

    (tmp_path / "out").write_text("a file")
    spec = parse_job_spec({"n_clusters": 2, "id_field": "id", "embedding_field": "e",
                           "input_path": str(tmp_path / "in"), "output_path": str(tmp_path / "out")})
    with pytest.raises(OutputError, match="exists and is a file"):
        OutputGuard.prepare(spec)
