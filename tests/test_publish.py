"""`xrouter publish`: a checkpoint lands in the store atomically and verified (or not at all), and the
policy-pointer ConfigMap is patched through the official `kubernetes` client.

The Kubernetes API here is kmock's in-process emulator (PyPI `kmock`, `KubernetesEmulator`): a real
HTTP server that keeps objects in memory and serves get/patch/list/watch as the API server does. It
stands in for a cluster, which the test machines do not have (issue 6 names it as acceptable).
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil

import kmock
import pytest
from kubernetes import client

from policy_checkpoints import make_checkpoint
from xrouter import cli
from xrouter.common.settings import SettingsError, load
from xrouter.router.compact.checkpoint import MANIFEST, WEIGHTS, read_manifest
from xrouter.router.settings import RouterSettings
from xrouter_training import publish as publishing
from xrouter_training.publish import PublishError, Published, copy_to_store, point_configmap

NAMESPACE, POINTER = "xrouter", "xrouter-policy"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return make_checkpoint(tmp_path_factory.mktemp("train") / "checkpoint", "20260102030405-s1", seed=1)


def _copy(checkpoint: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(checkpoint, tmp_path / "src"))


def _store_entries(store: pathlib.Path) -> list[str]:
    return sorted(p.name for p in store.iterdir()) if store.exists() else []


def test_publish_copies_a_verified_version_atomically_and_only_once(checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    (checkpoint.parent / "scratch.txt").write_text("not part of the checkpoint")

    published = copy_to_store(checkpoint, store)

    assert published == Published("20260102030405-s1", store / "20260102030405-s1", copied=True)
    assert _store_entries(store) == ["20260102030405-s1"], "no staging folder is left behind"
    assert _store_entries(published.path) == sorted([MANIFEST, WEIGHTS, "encoder.int8.onnx"])
    assert read_manifest(published.path)["version"] == "20260102030405-s1"
    # Publishing the same version again is a no-op...
    assert copy_to_store(checkpoint, store) == Published(published.version, published.path, copied=False)
    # ...but different content under a published version is refused: versions are immutable.
    other = make_checkpoint(tmp_path / "retrained", "20260102030405-s1", seed=2)
    with pytest.raises(PublishError, match="already holds version '20260102030405-s1'.*different content"):
        copy_to_store(other, store)
    assert read_manifest(published.path)["sha256"] == read_manifest(checkpoint)["sha256"]


def test_a_corrupt_checkpoint_is_not_published(checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = _copy(checkpoint, tmp_path)
    weights = bytearray((source / WEIGHTS).read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (source / WEIGHTS).write_bytes(bytes(weights))
    store = tmp_path / "store"
    with pytest.raises(PublishError, match=r"policy\.safetensors: missing or its sha256 does not match"):
        copy_to_store(source, store)
    assert _store_entries(store) == []


def test_a_version_that_cannot_name_a_folder_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = make_checkpoint(tmp_path / "escape", "../outside", seed=3)
    with pytest.raises(PublishError, match=r"version '\.\./outside' cannot name a directory"):
        copy_to_store(source, tmp_path / "store")
    assert not (tmp_path / "outside").exists()


def test_a_copy_that_fails_or_arrives_damaged_leaves_nothing_in_the_store(checkpoint, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    real_copy = shutil.copyfile

    def disk_full(source: pathlib.Path, target: pathlib.Path) -> None:
        if pathlib.Path(target).name == MANIFEST:
            raise OSError(28, "No space left on device")
        real_copy(source, target)

    monkeypatch.setattr(publishing.shutil, "copyfile", disk_full)
    with pytest.raises(PublishError, match="No space left on device"):
        copy_to_store(checkpoint, store)
    assert _store_entries(store) == []

    def damaged(source: pathlib.Path, target: pathlib.Path) -> None:
        real_copy(source, target)
        if pathlib.Path(target).name == WEIGHTS:  # a storage layer that truncates silently
            with open(target, "r+b") as handle:
                handle.truncate(100)

    monkeypatch.setattr(publishing.shutil, "copyfile", damaged)
    with pytest.raises(PublishError, match=r"the copy .*\.tmp-20260102030405-s1-\w+ does not verify: .*policy\.safetensors"):
        copy_to_store(checkpoint, store)
    assert _store_entries(store) == []


# --- the policy pointer, on kmock's Kubernetes API emulator ---------------------------------------

def _api(server_url: str) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = server_url.rstrip("/")
    return client.CoreV1Api(client.ApiClient(configuration))


def _kubeconfig(path: pathlib.Path, server_url: str) -> pathlib.Path:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: emulator, cluster: {{server: "{server_url.rstrip('/')}"}}}}]
users: [{{name: publisher, user: {{token: test-token}}}}]
contexts: [{{name: emulator, context: {{cluster: emulator, user: publisher, namespace: {NAMESPACE}}}}}]
current-context: emulator
""")
    return path


def _pointer(k8s: kmock.KubernetesEmulator) -> dict[str, str]:
    return dict(k8s.objects[kmock.resource("v1/configmaps"), NAMESPACE, POINTER].raw.get("data", {}))


async def _create_pointer(api: client.CoreV1Api) -> None:
    # As the chart creates it: no data, so that Helm never owns what the trainer publishes.
    await asyncio.to_thread(api.create_namespaced_config_map, NAMESPACE,
                            {"metadata": {"name": POINTER, "namespace": NAMESPACE}})


async def test_publish_patches_the_policy_pointer(kmock: kmock.KubernetesEmulator, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    api = _api(str(kmock.url))
    await _create_pointer(api)
    published = copy_to_store(checkpoint, tmp_path / "store")

    # The kubernetes client is synchronous and the emulator serves on this loop: call it from a thread.
    await asyncio.to_thread(point_configmap, api, POINTER, NAMESPACE, published)

    data = _pointer(kmock)
    assert data["checkpoint"] == str(published.path) and data["version"] == published.version
    assert data["published"].endswith("+00:00")
    (patch,) = kmock[kmock.action.UPDATE]
    assert patch.headers["Content-Type"] == "application/strategic-merge-patch+json"


async def test_a_missing_pointer_is_a_clear_error(kmock: kmock.KubernetesEmulator, checkpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    published = copy_to_store(checkpoint, tmp_path / "store")
    with pytest.raises(PublishError, match=rf"configmap {NAMESPACE}/{POINTER}: HTTP 404 .*the Helm chart creates it"):
        await asyncio.to_thread(point_configmap, _api(str(kmock.url)), POINTER, NAMESPACE, published)


async def test_the_cli_publishes_and_points_through_the_kubeconfig(kmock: kmock.KubernetesEmulator, checkpoint,  # type: ignore[no-untyped-def]
                                                                   tmp_path, monkeypatch, capsys) -> None:
    await _create_pointer(_api(str(kmock.url)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not the in-cluster credentials
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", str(kmock.url))))
    store = tmp_path / "store"

    code = await asyncio.to_thread(cli.main, ["publish", str(checkpoint), "--store", str(store),
                                              "--configmap", POINTER])  # namespace from the context

    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"copied version 20260102030405-s1 -> {store / '20260102030405-s1'} (verified)" in out.out
    assert _pointer(kmock)["checkpoint"] == str(store / "20260102030405-s1")
    assert kmock[kmock.action.UPDATE][0].headers["Authorization"] == "Bearer test-token"

    corrupt = _copy(checkpoint, tmp_path)
    (corrupt / "encoder.int8.onnx").unlink()
    code = await asyncio.to_thread(cli.main, ["publish", str(corrupt), "--store", str(store), "--configmap", POINTER])
    assert code == 1
    assert "encoder.int8.onnx: missing or its sha256 does not match" in capsys.readouterr().err
    assert len(kmock[kmock.action.UPDATE]) == 1, "a refused checkpoint is never pointed at"


def test_without_kubernetes_credentials_publishing_stops_with_what_to_set(checkpoint, tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                                                          capsys) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    code = cli.main(["publish", str(checkpoint), "--store", str(tmp_path / "store"), "--configmap", POINTER])
    assert code == 1
    assert "no Kubernetes credentials to watch or patch the policy pointer" in capsys.readouterr().err
    assert (tmp_path / "store" / "20260102030405-s1").is_dir(), "the copy is kept: publishing again points it"


def test_lm_checkpoints_are_published_verified_and_refused_when_damaged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from xrouter.router.lm import checkpoint as lm_checkpoint
    from xrouter.router.policy_store import read_checkpoint_manifest
    from xrouter_training.lm_models import tiny_llama

    model, tokenizer = tiny_llama(seed=0)
    source = lm_checkpoint.save(tmp_path / "lm", model, tokenizer, {"version": "20260102030405-lm-s0"})
    published = copy_to_store(source, tmp_path / "store")
    manifest = read_checkpoint_manifest(published.path)
    assert published.copied and manifest["kind"] == "lm" and published.version == "20260102030405-lm-s0"
    assert sorted(p.name for p in published.path.iterdir()) == sorted([*manifest["sha256"], MANIFEST])
    assert copy_to_store(source, tmp_path / "store").copied is False  # the same version again: a no-op
    template = source / "tokenizer_config.json"
    template.write_text(template.read_text().replace("}", ', "model_max_length": 5}', 1))
    with pytest.raises(PublishError, match=r"tokenizer_config.json: missing or its sha256 does not match"):
        copy_to_store(source, tmp_path / "other-store")
    assert _store_entries(tmp_path / "other-store") == []


def test_router_pointer_settings_are_checked_at_start_up() -> None:
    targets = {"XROUTER_ROUTER_ADAPTERS_TARGET": "a:1", "XROUTER_ROUTER_METERING_TARGET": "m:1"}
    config = load(RouterSettings, {**targets, "XROUTER_ROUTER_POLICY_CONFIGMAP": POINTER})
    assert (config.policy_configmap, config.policy_namespace, config.policy_key) == (POINTER, "", "checkpoint")
    with pytest.raises(SettingsError, match="XROUTER_ROUTER_POLICY_CONFIGMAP must be a Kubernetes object name"):
        load(RouterSettings, {**targets, "XROUTER_ROUTER_POLICY_CONFIGMAP": "Policy_Pointer"})
    with pytest.raises(SettingsError, match="XROUTER_ROUTER_POLICY_KEY must be a ConfigMap key"):
        load(RouterSettings, {**targets, "XROUTER_ROUTER_POLICY_CONFIGMAP": POINTER, "XROUTER_ROUTER_POLICY_KEY": "a/b"})
