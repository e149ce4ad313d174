"""Raw Kubernetes REST calls through the official client, across its two generator APIs.

`kubernetes` >= 35 splits a request into ``param_serialize`` + ``call_api`` and no
longer raises on HTTP errors there; older releases have one ``call_api`` that raises.
`raw_request` hides that: it returns (status, body bytes) and never raises for an
HTTP status (network failures still raise).
"""

from __future__ import annotations

import os
from typing import Any, Optional


def load_api_client():
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config.

    KUBECONFIG is read now (the client reads it once, at import time)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
    return client.ApiClient(configuration)


def raw_request(api_client: Any, method: str, path: str, *, query: Optional[list] = None,
                headers: Optional[dict] = None, body: Any = None, timeout: Any = None) -> tuple[int, bytes]:
    from kubernetes.client.exceptions import ApiException

    headers = dict(headers or {})
    try:
        if hasattr(api_client, "param_serialize"):
            _method, url, header_params, serialized, post = api_client.param_serialize(
                method=method, resource_path=path, query_params=query or [], header_params=headers,
                body=body, auth_settings=["BearerToken"],
            )
            response = api_client.call_api(
                _method, url, header_params=header_params, body=serialized, post_params=post, _request_timeout=timeout
            )
            return response.status, response.read() or b""
        response = api_client.call_api(
            path, method, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
            _request_timeout=timeout,
        )
        return response.status, response.data or b""
    except ApiException as err:
        if not err.status:
            raise
        raw = err.body or b""
        return err.status, raw.encode() if isinstance(raw, str) else raw
