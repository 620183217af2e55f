{{/* Names, labels and the pieces every workload shares. */}}

{{- define "xrouter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "xrouter.fullname" -}}
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

{{/* The name of one component's objects: (dict "root" $ "component" "router"). */}}
{{- define "xrouter.componentName" -}}
{{- printf "%s-%s" (include "xrouter.fullname" .root | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" }}
{{- end }}

{{- define "xrouter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xrouter.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "xrouter.labels" -}}
{{ include "xrouter.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: xrouter
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* An image reference from a block with repository/tag/digest; the digest wins. */}}
{{- define "xrouter.imageRef" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $img.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The runtime image of one service: the global block merged with the service's overrides. */}}
{{- define "xrouter.serviceImage" -}}
{{- $img := merge (deepCopy (.svc.image | default dict)) .root.Values.image -}}
image: {{ include "xrouter.imageRef" (dict "root" .root "image" $img) | quote }}
imagePullPolicy: {{ $img.pullPolicy }}
{{- end }}

{{/* OTEL_* variables: the collector address and resource attributes from values. */}}
{{- define "xrouter.otelEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ printf "xrouter-%s" .component | quote }}
{{- $attrs := list "service.namespace=xrouter" (printf "k8s.namespace.name=%s" .root.Release.Namespace) }}
{{- range $k, $v := .root.Values.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%v" $k $v) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- if .root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.otel.endpoint | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
{{- end }}
{{- end }}

{{/* A service's settings as XROUTER_<SERVICE>_<NAME> entries (null keeps the service default). */}}
{{- define "xrouter.settingsData" -}}
{{- $prefix := printf "XROUTER_%s_" (upper .component) }}
{{- range $key, $value := .settings }}
{{- if not (kindIs "invalid" $value) }}
{{ printf "%s%s" $prefix ($key | snakecase | upper) }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "xrouter.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "xrouter.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* Service DNS address host:port of a component, for the router's targets. */}}
{{- define "xrouter.target" -}}
{{ include "xrouter.componentName" (dict "root" .root "component" .component) }}:{{ .port }}
{{- end }}

{{/* The Secret and key holding XROUTER_METERING_DATABASE_URL. */}}
{{- define "xrouter.databaseSecret" -}}
{{- if .Values.postgresql.enabled -}}
{{ include "xrouter.componentName" (dict "root" . "component" "postgresql") }}
{{- else -}}
{{ required "metering.database.existingSecret: name the Secret holding the ledger's database URL (or set postgresql.enabled=true for a trial database)" .Values.metering.database.existingSecret }}
{{- end -}}
{{- end }}

{{- define "xrouter.databaseSecretKey" -}}
{{- if .Values.postgresql.enabled }}url{{ else }}{{ .Values.metering.database.secretKey }}{{ end -}}
{{- end }}

{{/* The container env entry that takes the ledger's URL from its Secret. */}}
{{- define "xrouter.databaseUrlEnv" -}}
- name: XROUTER_METERING_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "xrouter.databaseSecret" . }}
      key: {{ include "xrouter.databaseSecretKey" . }}
{{- end }}

{{- define "xrouter.catalogConfigMapName" -}}
{{- .Values.catalog.existingConfigMap | default (printf "%s-catalog" (include "xrouter.fullname" .)) }}
{{- end }}

{{/* The catalog YAML the chart ships (files/catalog.yaml unless catalog.content is set). */}}
{{- define "xrouter.catalogContent" -}}
{{- if .Values.catalog.existingConfigMap }}{{ .Values.catalog.existingConfigMap }}{{ else }}{{ .Values.catalog.content | default (.Files.Get "files/catalog.yaml") }}{{ end }}
{{- end }}

{{/* The Secret with the metering service key (raw, for the router) and its SHA-256 (for metering). */}}
{{- define "xrouter.meteringAuthSecret" -}}
{{- .Values.metering.auth.existingSecret | default (printf "%s-metering-auth" (include "xrouter.fullname" .)) }}
{{- end }}

{{- define "xrouter.meteringAuthEnv" -}}
- name: XROUTER_METERING_SERVICE_KEY_SHA256
  valueFrom:
    secretKeyRef:
      name: {{ include "xrouter.meteringAuthSecret" . }}
      key: service-key-sha256
- name: XROUTER_METERING_ADMIN_KEY_SHA256
  valueFrom:
    secretKeyRef:
      name: {{ include "xrouter.meteringAuthSecret" . }}
      key: admin-key-sha256
      optional: true
{{- end }}

{{/* The router's service key for metering: the raw key from the same Secret metering hashes. */}}
{{- define "xrouter.meteringApiKeyEnv" -}}
- name: XROUTER_ROUTER_METERING_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "xrouter.meteringAuthSecret" . }}
      key: service-key
{{- end }}

{{/* The checkpoint store's PVC ("" when there is none): the training Job writes to it, the routers
read it. It exists when training is enabled (the chart makes it) or when existingClaim names one. */}}
{{- define "xrouter.checkpointClaim" -}}
{{- $c := .Values.training.checkpoints -}}
{{- if $c.existingClaim -}}
{{ $c.existingClaim }}
{{- else if .Values.training.enabled -}}
{{ include "xrouter.componentName" (dict "root" . "component" "training") }}-checkpoints
{{- end -}}
{{- end }}

{{/* A service's TLS files (mounted from tls.existingSecret) and its plaintext health-only port. */}}
{{- define "xrouter.tlsEnv" -}}
{{- $prefix := printf "XROUTER_%s" (upper .component) -}}
- name: {{ $prefix }}_TLS_CERT_FILE
  value: /etc/xrouter/tls/tls.crt
- name: {{ $prefix }}_TLS_KEY_FILE
  value: /etc/xrouter/tls/tls.key
- name: {{ $prefix }}_TLS_CA_FILE
  value: /etc/xrouter/tls/ca.crt
- name: {{ $prefix }}_HEALTH_PORT
  value: {{ .root.Values.healthPort | quote }}
{{- end }}
