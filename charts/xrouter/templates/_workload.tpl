{{/*
One service's Deployment. Arguments (a dict):
  root, component, svc (its values block), grpcPort, ports (list of dicts name/port),
  env (extra container env, YAML), volumes / volumeMounts (YAML), checksums (list of strings),
  startupSeconds (how long start-up may take before liveness applies).
Settings reach the container from the component's ConfigMap (envFrom); the checksum of that
ConfigMap (and of anything else in .checksums) is a pod annotation, so a change rolls the pods.
*/}}
{{- define "xrouter.deployment" -}}
{{- $root := .root -}}
{{- $tls := $root.Values.tls.enabled -}}
{{- /* kubelet's gRPC probes cannot speak TLS: with TLS on they use the plaintext health-only port. */}}
{{- $probePort := ternary $root.Values.healthPort .grpcPort $tls -}}
{{- $name := include "xrouter.componentName" (dict "root" $root "component" .component) -}}
{{- $ctx := dict "root" $root "component" .component -}}
apiVersion: apps/v1
kind: {{ .kind | default "Deployment" }}
metadata:
  name: {{ $name }}
  labels:
    {{- include "xrouter.labels" $ctx | nindent 4 }}
spec:
  {{- if not (dig "autoscaling" "enabled" false .svc) }}
  replicas: {{ .svc.replicas }}
  {{- end }}
  {{- if eq (.kind | default "Deployment") "StatefulSet" }}
  serviceName: {{ $name }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "xrouter.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "xrouter.labels" $ctx | nindent 8 }}
      annotations:
        checksum/config: {{ join "," .checksums | sha256sum }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: {{ .automountToken | default false }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "xrouter.podSecurityContext" $root | nindent 8 }}
      # Longer than the service's own drain (XROUTER_*_GRACE_S) so in-flight RPCs finish.
      terminationGracePeriodSeconds: {{ add (int (.svc.settings.graceS | default 5)) 10 }}
      containers:
        - name: {{ .component }}
          {{- include "xrouter.serviceImage" (dict "root" $root "svc" .svc) | nindent 10 }}
          command: [{{ printf "xrouter-%s" .component | quote }}]
          ports:
            {{- range .ports }}
            - name: {{ .name }}
              containerPort: {{ .port }}
              protocol: TCP
            {{- end }}
            - name: metrics
              containerPort: {{ $root.Values.metricsPort }}
              protocol: TCP
            {{- if $tls }}
            - name: health
              containerPort: {{ $root.Values.healthPort }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ $name }}-settings
          env:
            {{- include "xrouter.otelEnv" $ctx | nindent 12 }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- if $tls }}
            {{- include "xrouter.tlsEnv" $ctx | nindent 12 }}
            {{- end }}
          # Native gRPC probes against grpc.health.v1 (NOT_SERVING while draining).
          startupProbe:
            grpc:
              port: {{ $probePort }}
            periodSeconds: 5
            failureThreshold: {{ div (int (.startupSeconds | default 60)) 5 }}
          readinessProbe:
            grpc:
              port: {{ $probePort }}
            periodSeconds: 5
            failureThreshold: 2
          livenessProbe:
            grpc:
              port: {{ $probePort }}
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 3
          resources:
            {{- toYaml .svc.resources | nindent 12 }}
          securityContext:
            {{- include "xrouter.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $tls }}
            - name: tls
              mountPath: /etc/xrouter/tls
              readOnly: true
            {{- end }}
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        # The root filesystem is read-only; Python and gRPC still want a scratch /tmp.
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        {{- if $tls }}
        - name: tls
          secret:
            secretName: {{ required "tls.existingSecret: name the Secret with tls.crt, tls.key and ca.crt (e.g. cert-manager's)" $root.Values.tls.existingSecret }}
            defaultMode: 0440
        {{- end }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- with .svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "xrouter.selectorLabels" $ctx | nindent 14 }}
  {{- with .volumeClaimTemplates }}
  volumeClaimTemplates:
    {{- . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* A component's settings ConfigMap: the chart-managed entries plus the values block's settings. */}}
{{- define "xrouter.settingsConfigMap" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "xrouter.componentName" $ctx }}-settings
  labels:
    {{- include "xrouter.labels" $ctx | nindent 4 }}
data:
  {{- include "xrouter.settingsData" (dict "component" .component "settings" (merge (deepCopy .managed) .svc.settings)) | trim | nindent 2 }}
{{- end }}

{{/* A component's Service. `metrics: false` leaves the metrics port out (the router's public
Service; its metrics Service is `name` <router>-metrics with only that port). Prometheus' job is
the component's name either way (the ServiceMonitor's jobLabel). */}}
{{- define "xrouter.service" -}}
{{- $ctx := dict "root" .root "component" .component -}}
{{- $component := include "xrouter.componentName" $ctx -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ .name | default $component }}
  labels:
    {{- include "xrouter.labels" $ctx | nindent 4 }}
    xrouter.io/metrics-job: {{ $component }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .type | default "ClusterIP" }}
  selector:
    {{- include "xrouter.selectorLabels" $ctx | nindent 4 }}
  ports:
    {{- range .ports }}
    - name: {{ .name }}
      port: {{ .port }}
      targetPort: {{ .name }}
      protocol: TCP
      {{- if hasPrefix "grpc" .name }}
      appProtocol: grpc
      {{- end }}
    {{- end }}
    {{- if ne (toString .metrics) "false" }}
    - name: metrics
      port: {{ .root.Values.metricsPort }}
      targetPort: metrics
      protocol: TCP
    {{- end }}
{{- end }}

{{- define "xrouter.serviceAccount" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "xrouter.componentName" $ctx }}
  labels:
    {{- include "xrouter.labels" $ctx | nindent 4 }}
automountServiceAccountToken: false
{{- end }}

{{/* PodDisruptionBudget: maxUnavailable keeps node drains possible even at one replica. */}}
{{- define "xrouter.pdb" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "xrouter.componentName" $ctx }}
  labels:
    {{- include "xrouter.labels" $ctx | nindent 4 }}
spec:
  maxUnavailable: {{ .svc.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "xrouter.selectorLabels" $ctx | nindent 6 }}
{{- end }}

{{- define "xrouter.hpa" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "xrouter.componentName" $ctx }}
  labels:
    {{- include "xrouter.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ .kind | default "Deployment" }}
    name: {{ include "xrouter.componentName" $ctx }}
  minReplicas: {{ .svc.autoscaling.minReplicas }}
  maxReplicas: {{ .svc.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .svc.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
