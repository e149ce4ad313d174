"""Kubernetes test support: nothing here is a test, and nothing here ships.

- `emulator` / `semantics`: an in-memory API server (kmock plus realism fixes);
- `harness`: the `kube` fixture, `run_kopf`, `wait_for`;
- `kubelet`: a fake kubelet/dask operator running pods as local processes;
- `fake_api`: an in-memory `KubeApi` for reconcile unit tests;
- `smoke_handlers`: a tiny kopf operator for the emulator's smoke test;
- `crd_validation`: offline CRD schema and CEL checks of manifests;
- `tools` / `chart`: the real helm/kubectl binaries and chart rendering helpers.

See docs/testing-kubernetes.md. `tests/conftest.py` puts `tests/` on sys.path, so
tests import these as `k8s.<module>`.
"""
