"""Hot reload from the policy pointer: a ConfigMap whose ``checkpoint`` key names the checkpoint (or
baseline) the routers should serve. The training Job (``xrouter publish``) patches it; every router
watches it through the Kubernetes API and loads what it names through the :class:`PolicyStore`
(verify → atomic swap). A checkpoint that fails verification is refused and logged, and the policy
serving before keeps serving.

The official ``kubernetes`` client is synchronous, so the watch runs on a daemon thread and hands
events to the event loop; the store's verification and swap happen on the loop, one event at a time.
Each (re)connection starts a fresh watch, whose first event is the pointer's current state, so
nothing published while the API was unreachable is missed (and no resourceVersion can expire).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pathlib
import random
import threading
from typing import Any

from prometheus_client import Counter, Gauge

from xrouter.common.errors import XRouterError
from xrouter.common.settings import SettingsError
from xrouter.router.policy_store import ROLLBACK, PolicyStore
from xrouter.router.settings import RouterSettings

log = logging.getLogger(__name__)
SERVICE_ACCOUNT_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

POINTER_LOADS = Counter(
    "xrouter_policy_pointer_loads", "Policy pointer changes acted on, by outcome (loaded, refused, unchanged)",
    ["outcome"])
# 0 while the router is reconnecting: it would miss a publish until the watch is back.
POINTER_WATCHING = Gauge("xrouter_policy_pointer_watching", "1 while the policy pointer watch stream is open")


def kube_api(namespace: str = "") -> tuple[Any, str]:
    """A ``CoreV1Api`` from the pod's service account, else from the kubeconfig (``$KUBECONFIG`` or
    ``~/.kube/config``), and the namespace to use: ``namespace``, else the pod's or the kubeconfig
    context's, else ``default``. Raises SettingsError when there are no credentials at all."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
        if not namespace and SERVICE_ACCOUNT_NAMESPACE.is_file():
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except config.ConfigException:
        # The client reads $KUBECONFIG when it is imported; read it now, when it is used.
        kubeconfig = os.environ.get("KUBECONFIG") or None
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            if not namespace:
                _, active = config.list_kube_config_contexts(config_file=kubeconfig)
                namespace = active.get("context", {}).get("namespace", "")
        except config.ConfigException as error:
            raise SettingsError(f"no Kubernetes credentials to watch or patch the policy pointer: not in a pod "
                                f"with a service account, and no usable kubeconfig ({error}); set KUBECONFIG") from None
    return client.CoreV1Api(client.ApiClient(configuration)), namespace or "default"


@dataclasses.dataclass(frozen=True)
class PointerOutcome:
    """What the watcher last did with the pointer: ``loaded``, ``refused`` or ``unchanged``."""

    value: str
    outcome: str
    message: str


class PolicyWatcher:
    """Watches ConfigMap ``namespace/name`` and loads the policy its ``key`` names into ``store``.

    It acts when the ConfigMap's data changes; a value that already serves is not reloaded, so a
    reconnect (which replays the current state) never reloads, and a direct ``LoadPolicy`` push
    keeps serving until the next publish."""

    def __init__(self, store: PolicyStore, api: Any, name: str, namespace: str, key: str = "checkpoint", *,
                 server_timeout_s: int = 300, backoff_s: tuple[float, float] = (0.5, 30.0)) -> None:
        self.store, self.name, self.namespace, self.key = store, name, namespace, key
        self.last: PointerOutcome | None = None
        self._api = api
        self._server_timeout_s = server_timeout_s
        self._backoff_s = backoff_s
        self._seen: tuple[tuple[str, str], ...] | None = None
        self._stopping = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pointer(self) -> str:
        return f"configmap {self.namespace}/{self.name} key {self.key!r}"

    def start(self) -> PolicyWatcher:
        """Start watching (call from the event loop that serves the router)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._task = asyncio.create_task(self._consume(events), name=f"policy-watch-{self.name}")
        self._thread = threading.Thread(target=self._follow, args=(loop, events), daemon=True,
                                        name=f"policy-watch-{self.name}")
        self._thread.start()
        log.info("following the policy pointer %s", self.pointer)
        return self

    async def stop(self) -> None:
        """Close the watch stream and wait for the thread (a load in progress is cancelled)."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()  # shuts the stream's socket: the blocked read returns at once
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)

    # --- the watch thread ------------------------------------------------------------------------

    def _follow(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        initial, ceiling = self._backoff_s
        delay = initial
        while not self._stopping.is_set():
            received = False
            self._watch = watch.Watch()
            if self._stopping.is_set():  # stop() ran while we were between two streams
                return
            try:
                # The field selector is what RBAC's resourceNames allows a watch on; the name is
                # checked again on each event in case an API server (or emulator) ignores it.
                for event in self._watch.stream(
                        self._api.list_namespaced_config_map, self.namespace,
                        field_selector=f"metadata.name={self.name}", timeout_seconds=self._server_timeout_s,
                        _request_timeout=(10, self._server_timeout_s + 30)):
                    if not received:
                        POINTER_WATCHING.set(1)
                        received = True
                    try:
                        loop.call_soon_threadsafe(events.put_nowait, (event["type"], event["raw_object"]))
                    except RuntimeError:  # the event loop is closed: the router is shutting down
                        return
                problem = "" if received else "the stream closed without the pointer's state"
            except ApiException as error:
                problem = f"HTTP {error.status} {error.reason}"
            except (HTTPError, OSError) as error:
                problem = f"{type(error).__name__}: {error}"
            finally:
                POINTER_WATCHING.set(0)
            if self._stopping.is_set():
                return
            if received:
                delay = initial
            if problem:
                log.warning("watching the policy pointer %s: %s; reconnecting in %.1fs", self.pointer, problem, delay)
            # Jitter: a fleet of routers must not reconnect to the API server in lockstep.
            self._stopping.wait(delay * random.uniform(0.8, 1.2))
            if not received:
                delay = min(delay * 2, ceiling)

    # --- the event loop side ---------------------------------------------------------------------

    async def _consume(self, events: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        while True:
            kind, obj = await events.get()
            if obj.get("metadata", {}).get("name") != self.name:
                continue
            if kind == "DELETED":
                log.warning("the policy pointer %s was deleted; still serving %s", self.pointer, self._serving())
                self._seen = None
                continue
            data = obj.get("data") or {}
            seen = tuple(sorted((str(k), str(v)) for k, v in data.items()))
            if seen != self._seen:
                self._seen = seen
                await self.apply(str(data.get(self.key, "")).strip())

    async def apply(self, value: str) -> PointerOutcome | None:
        """Load what the pointer names, unless it already serves; refusals are logged, not raised."""
        if not value:
            log.info("the policy pointer %s names nothing yet; serving %s", self.pointer, self._serving())
            return None
        if value == ROLLBACK:
            # A pointer names what should serve; a rollback is an action (LoadPolicy "rollback").
            return self._record(value, "refused", f"{ROLLBACK!r} is not a policy: publish the version to roll back to")
        if value == self.store.source:
            return self._record(value, "unchanged", f"already serving {self._serving()}")
        try:
            await self.store.load(value)
        except XRouterError as error:
            return self._record(value, "refused", error.message)
        except Exception as error:  # a bug in one load must not end the watch for good (traceback logged)
            log.exception("loading %s from the policy pointer failed unexpectedly", value)
            return self._record(value, "refused", f"{type(error).__name__}: {error}")
        return self._record(value, "loaded", f"now serving {self._serving()}")

    def _record(self, value: str, outcome: str, message: str) -> PointerOutcome:
        self.last = PointerOutcome(value, outcome, message)
        POINTER_LOADS.labels(outcome).inc()
        if outcome == "refused":
            log.error("policy pointer %s -> %s refused: %s; still serving %s", self.pointer, value, message,
                      self._serving())
        else:
            log.info("policy pointer %s -> %s: %s", self.pointer, value, message)
        return self.last

    def _serving(self) -> str:
        policy = self.store.serving
        return f"{policy.kind}@{policy.version} from {self.store.source}"


def start_policy_watch(config: RouterSettings, store: PolicyStore) -> PolicyWatcher | None:
    """The router's watcher when ``XROUTER_ROUTER_POLICY_CONFIGMAP`` is set (None otherwise)."""
    if not config.policy_configmap:
        return None
    api, namespace = kube_api(config.policy_namespace)
    return PolicyWatcher(store, api, config.policy_configmap, namespace, config.policy_key).start()
