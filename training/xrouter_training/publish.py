"""``xrouter publish``: put a checkpoint in the checkpoint store and point the routers at it.

1. Copy: the checkpoint's files go to ``STORE/.tmp-<version>-<random>``, are flushed to disk and
   verified (every sha256, the manifest's own digest), then renamed to ``STORE/<version>`` in one
   step, so a router never sees a half-copied version. Versions are immutable: publishing a version
   the store already holds is a no-op when the content is the same and an error when it differs.
2. Point: patch the policy-pointer ConfigMap (``data[key]`` = the version's path in the store; the
   routers watch it) and/or push the path to routers directly with ``RouterService.LoadPolicy``.
   The routers verify again (hashes, catalog, a smoke episode) before they swap. The path is
   absolute: mount the store at the same path in the training Job and in the routers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import re
import shutil
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from xrouter.common.durable import fsync_path
from xrouter.common.errors import InvalidArgument
from xrouter.router.policy_store import MANIFEST, read_checkpoint_manifest

VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class PublishError(Exception):
    """Publishing stopped; the message names what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class Published:
    """A version in the store: ``path`` is what the pointer and LoadPolicy carry."""

    version: str
    path: pathlib.Path
    copied: bool  # False when the store already held this exact version


def _verified(directory: pathlib.Path, what: str) -> dict[str, Any]:
    try:
        return read_checkpoint_manifest(directory)
    except InvalidArgument as error:
        raise PublishError(f"{what} {directory} does not verify: {error.message.removeprefix('source: ')}") from None


def copy_to_store(checkpoint: pathlib.Path | str, store: pathlib.Path | str) -> Published:
    """Copy a verified checkpoint into ``store/<version>`` atomically, and verify the copy."""
    checkpoint, store = pathlib.Path(checkpoint).resolve(), pathlib.Path(store).resolve()
    manifest = _verified(checkpoint, "checkpoint")
    version = str(manifest.get("version", ""))
    if not VERSION.fullmatch(version):
        raise PublishError(f"checkpoint {checkpoint}: version {version!r} cannot name a directory in the store "
                           "(letters, digits, '.', '_', '-'; at most 128)")
    target = store / version
    source_manifest = (checkpoint / MANIFEST).read_bytes()
    if target.exists():
        return _already_there(target, source_manifest)
    staging = store / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
        # The manifest names every file of a checkpoint; nothing else in the folder is copied.
        for name in [*manifest["sha256"], MANIFEST]:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)  # an LM checkpoint may nest files
            shutil.copyfile(checkpoint / name, staging / name)
            fsync_path(staging / name)
        fsync_path(staging)
        _verified(staging, "the copy")
        try:
            staging.rename(target)
        except OSError:
            if target.exists():  # another publisher won the race with the same version
                return _already_there(target, source_manifest)
            raise
        fsync_path(store)  # the rename itself survives a crash
    except OSError as error:
        raise PublishError(f"copying {checkpoint} into the store {store}: {error}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return Published(version, target, copied=True)


def _already_there(target: pathlib.Path, source_manifest: bytes) -> Published:
    manifest = _verified(target, "the store's copy")
    if (target / MANIFEST).read_bytes() != source_manifest:
        raise PublishError(f"the store already holds version {manifest['version']!r} at {target} with different "
                           "content; versions are immutable: publish this checkpoint under a new version")
    return Published(str(manifest["version"]), target, copied=False)


def point_configmap(api: Any, name: str, namespace: str, published: Published, key: str = "checkpoint") -> None:
    """Patch the policy-pointer ConfigMap so that the routers watching it load ``published``."""
    from kubernetes.client.exceptions import ApiException

    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    body = {"data": {key: str(published.path), "version": published.version, "published": stamp}}
    try:
        api.patch_namespaced_config_map(name, namespace, body, _request_timeout=30)
    except ApiException as error:
        hint = {404: " (does it exist? the Helm chart creates it; check --configmap and --namespace)",
                403: " (the publisher's service account needs get/patch on it)"}.get(error.status or 0, "")
        raise PublishError(f"patching configmap {namespace}/{name}: HTTP {error.status} {error.reason}{hint}") from None


def push_to_router(target: str, published: Published, timeout_s: float = 120.0, api_key: str | None = None) -> str:
    """``RouterService.LoadPolicy`` on one router; returns what it now serves (kind@version).
    LoadPolicy needs an admin key: ``api_key``, else $XROUTER_API_KEY."""
    import os

    import grpc

    from xrouter.api.router.v1 import router_pb2, router_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            key = api_key if api_key is not None else os.environ.get("XROUTER_API_KEY", "")
            info = router_pb2_grpc.RouterServiceStub(channel).LoadPolicy(
                router_pb2.LoadPolicyRequest(source=str(published.path)), timeout=timeout_s,
                metadata=(("authorization", f"Bearer {key}"),) if key else None)
        except grpc.RpcError as error:
            raise PublishError(f"router {target} did not load {published.path}: "
                               f"{error.code().name}: {error.details()}") from None
    return f"{info.kind}@{info.version}"


def publish(checkpoint: pathlib.Path | str, store: pathlib.Path | str, *, configmap: str = "", namespace: str = "",
            key: str = "checkpoint", routers: Sequence[str] = (), api: Any = None) -> Published:
    """Copy into the store, then point the ConfigMap (when named) and push to each router."""
    published = copy_to_store(checkpoint, store)
    print(f"{'copied' if published.copied else 'already in the store:'} version {published.version} "
          f"-> {published.path} (verified)", flush=True)
    if configmap:
        if api is None:
            from xrouter.router.policy_watch import kube_api

            api, namespace = kube_api(namespace)
        point_configmap(api, configmap, namespace, published, key)
        print(f"configmap {namespace}/{configmap}: {key} = {published.path}", flush=True)
    for target in routers:
        print(f"router {target}: serving {push_to_router(target, published)}", flush=True)
    return published


def run_cli(args: argparse.Namespace) -> int:
    """``xrouter publish`` (arguments in xrouter/cli.py): 0 when every step succeeded, 1 otherwise."""
    from xrouter.common.settings import SettingsError

    try:
        publish(args.checkpoint, args.store, configmap=args.configmap, namespace=args.namespace, key=args.key,
                routers=args.router)
    except (PublishError, SettingsError) as error:
        print(f"xrouter publish: {error}", file=sys.stderr)
        return 1
    return 0


def rollback_cli(args: argparse.Namespace) -> int:
    """``xrouter rollback``: LoadPolicy("rollback") on each ``--router`` (each router keeps the policy it
    served before the last swap), and/or, with ``--store`` and ``--to``, point the policy ConfigMap
    at that earlier version (already in the store: nothing is copied)."""
    import grpc

    from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
    from xrouter.common.settings import SettingsError
    from xrouter.router.policy_store import ROLLBACK

    if not args.router and not (args.store and args.to):
        print("xrouter rollback: name --router HOST:PORT (repeatable) and/or --store with --to VERSION",
              file=sys.stderr)
        return 2
    if bool(args.store) != bool(args.to):  # one alone was ignored
        print("xrouter rollback: --store and --to go together: they point the policy ConfigMap at a version "
              "in the store", file=sys.stderr)
        return 2
    try:
        if args.store and args.to:
            target = pathlib.Path(args.store) / args.to
            if not VERSION.fullmatch(args.to) or not target.is_dir():
                raise PublishError(f"--to {args.to!r}: no such version in the store {args.store}")
            publish(target, args.store, configmap=args.configmap, namespace=args.namespace, key=args.key)
        key = os.environ.get("XROUTER_API_KEY", "")
        for router in args.router:
            with grpc.insecure_channel(router) as channel:
                try:
                    info = router_pb2_grpc.RouterServiceStub(channel).LoadPolicy(
                        router_pb2.LoadPolicyRequest(source=ROLLBACK), timeout=60,
                        metadata=(("authorization", f"Bearer {key}"),) if key else None)
                except grpc.RpcError as error:
                    raise PublishError(f"router {router} did not roll back: {error.code().name}: "
                                       f"{error.details()}") from None
            print(f"router {router}: serving {info.kind}@{info.version}", flush=True)
    except (PublishError, SettingsError) as error:
        print(f"xrouter rollback: {error}", file=sys.stderr)
        return 1
    return 0
