"""The Pod Security Standard "restricted" profile as a checker (test support only).

`restricted_violations(pod_spec)` lists every control of the published profile
(which includes all of "baseline") that a PodSpec fails, one line each; [] means the
pod would be admitted in a namespace labelled
``pod-security.kubernetes.io/enforce: restricted``. Written from the profile's
control table (Kubernetes docs, "Pod Security Standards"); the pod template's
annotations (AppArmor) are out of scope since the operator writes none.
"""

from __future__ import annotations

from typing import Any, Iterator

# Restricted: the only volume types allowed.
ALLOWED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
})
# Restricted: the only capability a container may add back (after dropping ALL).
ALLOWED_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
ALLOWED_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
SECCOMP_CONFINED = frozenset({"RuntimeDefault", "Localhost"})


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(field) or []:
            yield f"{field}[{container.get('name')}]", container


def _baseline(pod: dict[str, Any], pod_ctx: dict[str, Any]) -> list[str]:
    out = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"host namespaces: {key} is true")
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        out.append("hostProcess: securityContext.windowsOptions.hostProcess is true")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            out.append(f"hostPath volumes: volume {volume.get('name')} is a hostPath")
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctls: {sysctl.get('name')} is not in the safe set")
    out += _selinux("securityContext", pod_ctx)
    if (pod_ctx.get("appArmorProfile") or {}).get("type") == "Unconfined":
        out.append("AppArmor: securityContext.appArmorProfile is Unconfined")
    for where, container in _containers(pod):
        ctx = container.get("securityContext") or {}
        if ctx.get("privileged"):
            out.append(f"privileged: {where} is privileged")
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"hostProcess: {where} is a hostProcess container")
        if ctx.get("procMount") not in (None, "Default"):
            out.append(f"/proc mount: {where} sets procMount {ctx['procMount']}")
        if (ctx.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"AppArmor: {where} is Unconfined")
        out += _selinux(where, ctx)
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"host ports: {where} uses hostPort {port['hostPort']}")
    return out


def _selinux(where: str, ctx: dict[str, Any]) -> list[str]:
    options = ctx.get("seLinuxOptions") or {}
    out = []
    if options.get("type", "") not in ALLOWED_SELINUX_TYPES:
        out.append(f"SELinux: {where} sets type {options['type']}")
    for key in ("user", "role"):
        if options.get(key):
            out.append(f"SELinux: {where} sets {key}")
    return out


def _restricted(pod: dict[str, Any], pod_ctx: dict[str, Any]) -> list[str]:
    out = []
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            out.append(f"volume types: volume {volume.get('name')} is {', '.join(sorted(kinds))}")
    pod_non_root = pod_ctx.get("runAsNonRoot") is True
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_ctx.get("runAsUser") == 0:
        out.append("running as non-root user: securityContext.runAsUser is 0")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_CONFINED:
        out.append(f"seccomp: securityContext.seccompProfile is {pod_seccomp}")
    for where, container in _containers(pod):
        ctx = container.get("securityContext") or {}
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"privilege escalation: {where} does not set allowPrivilegeEscalation: false")
        if ctx.get("runAsNonRoot") is False or (not pod_non_root and ctx.get("runAsNonRoot") is not True):
            out.append(f"running as non-root: {where} may run as root (runAsNonRoot not true)")
        if ctx.get("runAsUser") == 0:
            out.append(f"running as non-root user: {where} sets runAsUser 0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type")
        if (seccomp is not None and seccomp not in SECCOMP_CONFINED) or (seccomp is None and pod_seccomp is None):
            out.append(f"seccomp: {where} has no RuntimeDefault/Localhost seccompProfile")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            out.append(f"capabilities: {where} does not drop ALL")
        added = set(capabilities.get("add") or []) - ALLOWED_ADDED_CAPABILITIES
        if added:
            out.append(f"capabilities: {where} adds {', '.join(sorted(added))}")
    return out


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every "restricted" (and so "baseline") control that PodSpec `pod` fails."""
    pod_ctx = pod.get("securityContext") or {}
    return _baseline(pod, pod_ctx) + _restricted(pod, pod_ctx)
