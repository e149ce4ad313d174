{{/* Chart name, truncated to the 63-character DNS label limit. */}}
{{- define "kmeans-partition.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name (release-scoped). */}}
{{- define "kmeans-partition.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name for cluster-scoped objects (ClusterRole/Binding): prefixed with the release
namespace so one release per namespace (namespaced mode) never collides.
*/}}
{{- define "kmeans-partition.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kmeans-partition.fullname" .) }}
{{- end }}

{{- define "kmeans-partition.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "kmeans-partition.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kmeans-partition.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Common labels for every object the chart renders. */}}
{{- define "kmeans-partition.labels" -}}
helm.sh/chart: {{ include "kmeans-partition.chart" . }}
{{ include "kmeans-partition.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kmeans-partition
{{- end }}

{{- define "kmeans-partition.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kmeans-partition.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's ServiceAccount as an RBAC binding subject list. */}}
{{- define "kmeans-partition.rbacSubjects" -}}
- kind: ServiceAccount
  name: {{ include "kmeans-partition.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/* The namespace watched in namespaced mode; empty in cluster-wide mode. */}}
{{- define "kmeans-partition.watchNamespace" -}}
{{- if .Values.watchNamespace }}
{{- .Values.watchNamespace }}
{{- else if not .Values.clusterWide }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "kmeans-partition.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Rules for the namespaced kinds the operator reads and writes: exactly the verbs
operator/ (and kopf on its behalf) uses. Shared by the Role (namespaced mode) and
the ClusterRole (cluster-wide mode); none of them names a cluster-scoped resource.
*/}}
{{- define "kmeans-partition.namespacedRules" -}}
# The custom resource: kopf lists/watches it and patches metadata (finalizer, its
# annotations); each pass GETs it afresh.
- apiGroups: ["kmeanspartition.dev"]
  resources: ["kmeanspartitions"]
  verbs: ["get", "list", "watch", "patch"]
# Status merge patches; also all the per-resource runner Role grants, which the
# operator must hold itself to create that Role (RBAC escalation prevention).
- apiGroups: ["kmeanspartition.dev"]
  resources: ["kmeanspartitions/status"]
  verbs: ["patch"]
# Children watched by kopf (on.event) and created/read/deleted by name.
- apiGroups: ["kubernetes.dask.org"]
  resources: ["daskclusters"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Children created/read/deleted by name: the spec ConfigMap and the runner's RBAC.
- apiGroups: [""]
  resources: ["configmaps", "serviceaccounts"]
  verbs: ["get", "create", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "delete"]
# The NetworkPolicy guarding each resource's Dask pods, created/read/deleted by name.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "delete"]
# Secrets, by name only (never list/watch): each resource's Dask TLS Secret is created,
# read and deleted; with policy.secretLabel set, the storage.secretRef Secret is read to
# check its label. A Role cannot name them in advance (resourceNames cannot cover create).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "delete"]
# Pods, by label: the runner's termination message and the scheduler's readiness.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# core/v1 Events on the resource at each transition (kopf posts them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
