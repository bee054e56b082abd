{{/*
Chart name, truncated to the 63 characters Kubernetes allows in a label value.
*/}}
{{- define "moderation.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart> unless the release name already contains the chart name.
*/}}
{{- define "moderation.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "moderation.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "moderation.labels" -}}
helm.sh/chart: {{ include "moderation.chart" . }}
{{ include "moderation.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: moderation
{{- end }}

{{/*
Selector labels (immutable on a Deployment: never add to these).
*/}}
{{- define "moderation.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moderation.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Service account the worker pods run as.
*/}}
{{- define "moderation.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "moderation.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Secret holding the database URL and the Kafka SASL password: the chart's own or an existing one.
*/}}
{{- define "moderation.secretName" -}}
{{- if .Values.existingSecret.name }}
{{- .Values.existingSecret.name }}
{{- else }}
{{- printf "%s-secrets" (include "moderation.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Container image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "moderation.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Environment shared by the worker and the migration Job: every MODERATION_* setting the chart manages.
*/}}
{{- define "moderation.env" -}}
- name: MODERATION_DATA_DIR
  value: "/tmp/moderation"
- name: MODERATION_KAFKA__BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: MODERATION_KAFKA__INPUT_TOPIC
  value: {{ .Values.kafka.inputTopic | quote }}
- name: MODERATION_KAFKA__REVIEW_TOPIC
  value: {{ .Values.kafka.reviewTopic | quote }}
- name: MODERATION_KAFKA__DEAD_LETTER_TOPIC
  value: {{ .Values.kafka.deadLetterTopic | quote }}
- name: MODERATION_KAFKA__CONSUMER_GROUP
  value: {{ .Values.kafka.consumerGroup | quote }}
- name: MODERATION_KAFKA__CLIENT_ID
  value: {{ .Values.kafka.clientId | quote }}
- name: MODERATION_KAFKA__SESSION_TIMEOUT_MS
  value: {{ .Values.kafka.sessionTimeoutMs | quote }}
- name: MODERATION_KAFKA__MAX_POLL_INTERVAL_MS
  value: {{ .Values.kafka.maxPollIntervalMs | quote }}
- name: MODERATION_KAFKA__SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if .Values.kafka.saslMechanism }}
- name: MODERATION_KAFKA__SASL_MECHANISM
  value: {{ .Values.kafka.saslMechanism | quote }}
- name: MODERATION_KAFKA__SASL_USERNAME
  value: {{ .Values.kafka.saslUsername | quote }}
- name: MODERATION_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "moderation.secretName" . }}
      key: {{ .Values.existingSecret.kafkaSaslPasswordKey }}
{{- end }}
{{- if .Values.kafka.tls.caSecretName }}
- name: MODERATION_KAFKA__SSL_CAFILE
  value: "/etc/moderation/kafka-ca/{{ .Values.kafka.tls.caSecretKey }}"
{{- end }}
- name: MODERATION_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "moderation.secretName" . }}
      key: {{ .Values.existingSecret.databaseUrlKey }}
- name: MODERATION_MODEL__NAME_OR_PATH
  value: {{ .Values.model.nameOrPath | quote }}
- name: MODERATION_MODEL__DEVICE
  value: {{ .Values.model.device | quote }}
- name: MODERATION_MODEL__CPU_MODE
  value: {{ .Values.model.cpuMode | quote }}
- name: MODERATION_MODEL__COMPILE
  value: {{ .Values.model.compile | quote }}
- name: MODERATION_MODEL__GPU_DECODE
  value: {{ .Values.model.gpuDecode | quote }}
- name: MODERATION_BATCHING__MAX_SIZE
  value: {{ .Values.batching.maxSize | quote }}
- name: MODERATION_BATCHING__MAX_WAIT_MS
  value: {{ .Values.batching.maxWaitMs | quote }}
- name: MODERATION_BATCHING__LOADER_THREADS
  value: {{ .Values.batching.loaderThreads | quote }}
- name: MODERATION_BATCHING__MAX_BATCHES_IN_FLIGHT
  value: {{ .Values.batching.maxBatchesInFlight | quote }}
- name: MODERATION_POLICY__PATH
  value: "/etc/moderation/policies/{{ .Values.policies.active }}"
- name: MODERATION_IMAGES__MAX_BYTES
  value: {{ .Values.images.maxBytes | quote }}
- name: MODERATION_IMAGES__MAX_PIXELS
  value: {{ .Values.images.maxPixels | quote }}
- name: MODERATION_IMAGES__FETCH_TIMEOUT_S
  value: {{ .Values.images.fetchTimeoutS | quote }}
- name: MODERATION_IMAGES__ALLOW_HTTP
  value: {{ .Values.images.allowHttp | quote }}
- name: MODERATION_IMAGES__ALLOW_FILE
  value: {{ .Values.images.allowFile | quote }}
- name: MODERATION_OPS__ENABLED
  value: "true"
- name: MODERATION_OPS__PORT
  value: {{ .Values.ops.port | quote }}
- name: MODERATION_OPS__LIVENESS_TIMEOUT_S
  value: {{ .Values.ops.livenessTimeoutS | quote }}
- name: MODERATION_LOG__LEVEL
  value: {{ .Values.log.level | quote }}
- name: MODERATION_LOG__FORMAT
  value: {{ .Values.log.format | quote }}
- name: HF_HOME
  value: "{{ .Values.model.cache.mountPath }}/hf"
- name: HF_HUB_OFFLINE
  value: "1"
{{- /* The root filesystem is read-only: send library caches (torch.compile, Triton) to the /tmp emptyDir. */}}
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: TRITON_CACHE_DIR
  value: /tmp/.triton
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
