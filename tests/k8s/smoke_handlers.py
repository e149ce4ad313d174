"""A tiny kopf operator for the emulator's smoke test: finalizer, status, owned ConfigMap."""

import kopf
import kubernetes

GROUP, VERSION, PLURAL = "smoke.example.com", "v1", "smokes"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.watching.server_timeout = 10
    settings.watching.client_timeout = 15
    settings.posting.level = 0
    kubernetes.config.load_kube_config()


@kopf.on.create(GROUP, VERSION, PLURAL)
def create_child(body, name, namespace, patch, **_):
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"{name}-child"}, "data": {"greeting": body["spec"]["greeting"]}}
    kopf.adopt(config_map)
    kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, config_map)
    patch.status["phase"] = "Ready"


@kopf.on.delete(GROUP, VERSION, PLURAL)
def record_deletion(name, namespace, **_):
    kubernetes.client.CoreV1Api().create_namespaced_config_map(
        namespace, {"metadata": {"name": f"{name}-deleted"}, "data": {}})
