{{/* Chart name, capped at 63 characters (a DNS label). */}}
{{- define "troupe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name, capped at 63 characters; the release name alone when it already holds the chart name. */}}
{{- define "troupe.fullname" -}}
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

{{/* Name of one component's objects: <fullname>-<component>, the fullname cut so the whole fits 63. */}}
{{- define "troupe.componentName" -}}
{{- $component := .component }}
{{- $full := include "troupe.fullname" .root }}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len $component))) | trimSuffix "-") $component }}
{{- end }}

{{- define "troupe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "troupe.labels" -}}
helm.sh/chart: {{ include "troupe.chart" . }}
{{ include "troupe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: troupe
{{- end }}

{{/* Selector labels. */}}
{{- define "troupe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "troupe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: dict "root" $ "component" "worker". */}}
{{- define "troupe.componentLabels" -}}
{{ include "troupe.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "troupe.componentSelectorLabels" -}}
{{ include "troupe.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* An image reference: dict "root" $ "image" .Values.worker.image. */}}
{{- define "troupe.image" -}}
{{- $registry := .root.Values.global.image.registry }}
{{- $repo := .image.repository }}
{{- if $registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" $registry) $repo }}{{ end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .image.tag | toString) }}
{{- end }}
{{- end }}

{{- define "troupe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "troupe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "troupe.natsName" -}}
{{ include "troupe.componentName" (dict "root" . "component" "nats") }}
{{- end }}

{{/* The NATS URLs the Troupe processes connect to. */}}
{{- define "troupe.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s:%d" (include "troupe.natsName" .) (int .Values.nats.ports.client) }}
{{- else }}
{{- required "global.natsUrl is required when nats.enabled is false" .Values.global.natsUrl }}
{{- end }}
{{- end }}

{{/* Stream and bucket replicas for the coordinator: 3 on the chart's 3-node NATS, else 1. */}}
{{- define "troupe.streamReplicas" -}}
{{- if kindIs "invalid" .Values.coordinator.streamReplicas }}
{{- if and .Values.nats.enabled (ge (int .Values.nats.replicas) 3) }}3{{ else }}1{{ end }}
{{- else }}
{{- .Values.coordinator.streamReplicas }}
{{- end }}
{{- end }}

{{/* The OTLP endpoint, or "" for none. */}}
{{- define "troupe.otlpEndpoint" -}}
{{- if .Values.global.otel.endpoint }}
{{- .Values.global.otel.endpoint }}
{{- else if .Values.jaeger.enabled }}
{{- printf "http://%s:4318" (include "troupe.componentName" (dict "root" . "component" "jaeger")) }}
{{- end }}
{{- end }}

{{/* "true" when agent traffic is sealed: channel keys are given (in the values or a Secret). */}}
{{- define "troupe.sealing" -}}
{{- if or .Values.channelKeys .Values.existingChannelKeysSecret }}true{{ end }}
{{- end }}

{{/* The Secret of channel keys (one entry per key name). */}}
{{- define "troupe.channelKeysSecret" -}}
{{- default (printf "%s-channel-keys" (include "troupe.fullname" .)) .Values.existingChannelKeysSecret }}
{{- end }}

{{/* What a process needs to seal agent traffic: the keys directory and the key to seal with. */}}
{{- define "troupe.sealingEnv" -}}
{{- if include "troupe.sealing" . }}
- name: TROUPE_CHANNEL_KEYS_DIR
  value: /etc/troupe/keys
{{- with .Values.sealWith }}
- name: TROUPE_SEAL_WITH
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment every Troupe process shares (dict "root" $ "service" "troupe-worker"). */}}
{{- define "troupe.commonEnv" -}}
- name: TROUPE_NATS_URL
  value: {{ include "troupe.natsUrl" .root | quote }}
- name: TROUPE_NAMESPACE
  value: {{ .root.Values.global.namespace | quote }}
- name: TROUPE_LOG_LEVEL
  value: {{ .root.Values.global.logLevel | quote }}
{{- with include "troupe.otlpEndpoint" .root }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $.root.Values.global.otel.protocol | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name={{ .root.Release.Namespace }},service.namespace=troupe-{{ .root.Values.global.namespace }}"
{{- end }}

{{/* Pod-level settings every component shares. */}}
{{- define "troupe.podSpecCommon" -}}
serviceAccountName: {{ include "troupe.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling settings of one component's values block. */}}
{{- define "troupe.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Checksum of the configuration the Troupe pods read, so a change rolls them. */}}
{{- define "troupe.configChecksum" -}}
{{- $cm := include (print .Template.BasePath "/configmap.yaml") . }}
{{- $secret := include (print .Template.BasePath "/secret.yaml") . }}
{{- printf "%s%s" $cm $secret | sha256sum }}
{{- end }}

{{/* The three probes on the HTTP port: startup and liveness on /healthz, readiness on /readyz. */}}
{{- define "troupe.probes" -}}
startupProbe:
  httpGet: { path: /healthz, port: http }
  {{- toYaml .startup | nindent 2 }}
livenessProbe:
  httpGet: { path: /healthz, port: http }
  {{- toYaml .liveness | nindent 2 }}
readinessProbe:
  httpGet: { path: /readyz, port: http }
  {{- toYaml .readiness | nindent 2 }}
{{- end }}
