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
Secret the migration Job reads. The Job is a pre-install/pre-upgrade hook: it runs before the release's own
Secret exists (install) or is updated (upgrade), so the chart gives it a hook Secret of its own with the same
keys, deleted once the hooks succeed. An existing Secret is there before the release: the Job reads it.
*/}}
{{- define "moderation.migrationSecretName" -}}
{{- if .Values.existingSecret.name }}
{{- .Values.existingSecret.name }}
{{- else }}
{{- printf "%s-migrate" (include "moderation.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The keys of the chart-made Secrets (the release's and the migration hook's): one definition, so they agree.
*/}}
{{- define "moderation.secretData" -}}
{{- if and .Values.kafka.saslMechanism (not .Values.kafka.saslPassword) }}
{{- fail "kafka.saslMechanism is set: kafka.saslPassword is required (or use existingSecret.name)" }}
{{- end }}
type: Opaque
stringData:
  {{ .Values.existingSecret.databaseUrlKey }}: {{ required "database.url is required (or set existingSecret.name)" .Values.database.url | quote }}
  {{- if .Values.kafka.saslPassword }}
  {{ .Values.existingSecret.kafkaSaslPasswordKey }}: {{ .Values.kafka.saslPassword | quote }}
  {{- end }}
{{- end }}

{{/*
Pod annotation that rolls the pods when their credentials change: the chart-made Secret's content, or for an
existing Secret (whose content the chart never sees) its name and existingSecret.revision, which the operator
changes with each rotation.
*/}}
{{- define "moderation.secretChecksum" -}}
{{- if .Values.existingSecret.name }}
checksum/secret: {{ printf "%s/%s" .Values.existingSecret.name .Values.existingSecret.revision | sha256sum }}
{{- else }}
checksum/secret: {{ include "moderation.secretData" . | sha256sum }}
{{- end }}
{{- end }}

{{/*
Container image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "moderation.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Environment shared by every container (worker, migration, prunes, outcomes, console): every MODERATION_* setting
the chart manages but the console's own (moderation.consoleEnv). Integer settings go through int64: Helm reads numbers from values as float64 and would print
20971520 as 2.097152e+07, which the settings refuse.
Called with (dict "root" $ "secretName" NAME): the migration Job reads another Secret than the rest; the console
adds "console" true for its own settings.
*/}}
{{- define "moderation.env" -}}
{{- $secretName := .secretName }}
{{- $console := .console }}
{{- with .root }}
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
- name: MODERATION_KAFKA__REVIEW_OUTCOMES_TOPIC
  value: {{ .Values.kafka.reviewOutcomesTopic | quote }}
- name: MODERATION_KAFKA__DECISIONS_TOPIC
  value: {{ .Values.kafka.decisionsTopic | quote }}
- name: MODERATION_KAFKA__CONSUMER_GROUP
  value: {{ .Values.kafka.consumerGroup | quote }}
- name: MODERATION_KAFKA__DELIVERY_MODE
  value: {{ .Values.kafka.deliveryMode | quote }}
- name: MODERATION_KAFKA__TRANSACTIONAL_ID_PREFIX
  value: {{ .Values.kafka.transactionalIdPrefix | quote }}
- name: MODERATION_KAFKA__CLIENT_ID
  value: {{ .Values.kafka.clientId | quote }}
- name: MODERATION_KAFKA__SESSION_TIMEOUT_MS
  value: {{ .Values.kafka.sessionTimeoutMs | int64 | quote }}
- name: MODERATION_KAFKA__MAX_POLL_INTERVAL_MS
  value: {{ .Values.kafka.maxPollIntervalMs | int64 | quote }}
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
      name: {{ $secretName }}
      key: {{ .Values.existingSecret.kafkaSaslPasswordKey }}
{{- end }}
{{- if .Values.kafka.tls.caSecretName }}
- name: MODERATION_KAFKA__SSL_CAFILE
  value: "/etc/moderation/kafka-ca/{{ .Values.kafka.tls.caSecretKey }}"
{{- end }}
- name: MODERATION_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
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
  value: {{ .Values.batching.maxSize | int64 | quote }}
- name: MODERATION_BATCHING__MAX_WAIT_MS
  value: {{ .Values.batching.maxWaitMs | int64 | quote }}
- name: MODERATION_BATCHING__LOADER_THREADS
  value: {{ .Values.batching.loaderThreads | int64 | quote }}
- name: MODERATION_BATCHING__MAX_BATCHES_IN_FLIGHT
  value: {{ .Values.batching.maxBatchesInFlight | int64 | quote }}
- name: MODERATION_BATCHING__DRAIN_TIMEOUT_S
  value: {{ .Values.batching.drainTimeoutS | quote }}
- name: MODERATION_POLICY__PATH
  value: "/etc/moderation/policies/{{ .Values.policies.active }}"
{{- /* Keys of policies.files become paths under the mount, as JSON (checked in configmap-policies.yaml). */}}
{{- $sources := dict }}
{{- range $source, $file := .Values.policies.sources }}
{{- $_ := set $sources $source (printf "/etc/moderation/policies/%s" $file) }}
{{- end }}
- name: MODERATION_POLICY__SOURCES
  value: {{ toJson $sources | quote }}
{{- $shadow := list }}
{{- range .Values.policies.shadow }}
{{- $shadow = append $shadow (printf "/etc/moderation/policies/%s" .) }}
{{- end }}
- name: MODERATION_POLICY__SHADOW
  value: {{ toJson $shadow | quote }}
- name: MODERATION_POLICY__RELOAD_INTERVAL_S
  value: {{ .Values.policies.reloadIntervalS | quote }}
- name: MODERATION_EMBEDDINGS__STORE
  value: {{ .Values.embeddings.store | quote }}
- name: MODERATION_EMBEDDINGS__REUSE
  value: {{ .Values.embeddings.reuse | quote }}
- name: MODERATION_EMBEDDINGS__RETENTION_DAYS
  value: {{ .Values.embeddings.retentionDays | quote }}
- name: MODERATION_EMBEDDINGS__CACHE_SIZE
  value: {{ .Values.embeddings.cacheSize | int64 | quote }}
- name: MODERATION_IMAGES__MAX_BYTES
  value: {{ .Values.images.maxBytes | int64 | quote }}
- name: MODERATION_IMAGES__MAX_PIXELS
  value: {{ .Values.images.maxPixels | int64 | quote }}
- name: MODERATION_IMAGES__FETCH_TIMEOUT_S
  value: {{ .Values.images.fetchTimeoutS | quote }}
- name: MODERATION_IMAGES__ALLOW_HTTP
  value: {{ .Values.images.allowHttp | quote }}
- name: MODERATION_IMAGES__ALLOW_FILE
  value: {{ .Values.images.allowFile | quote }}
- name: MODERATION_IMAGES__DECODE_TIMEOUT_S
  value: {{ .Values.images.decodeTimeoutS | quote }}
- name: MODERATION_IMAGES__ALLOW_PRIVATE_NETWORKS
  value: {{ .Values.images.allowPrivateNetworks | quote }}
- name: MODERATION_IMAGES__MAX_REDIRECTS
  value: {{ .Values.images.maxRedirects | int64 | quote }}
- name: MODERATION_MEDIA__ENABLED
  value: {{ .Values.media.enabled | quote }}
{{- if .Values.media.enabled }}
{{- /* The media volume's mount (workers write there, the console reads); unset, the root filesystem is read-only. */}}
- name: MODERATION_MEDIA__DIRECTORY
  value: {{ .Values.media.mountPath | quote }}
{{- end }}
- name: MODERATION_MEDIA__MAX_SIDE
  value: {{ .Values.media.maxSide | int64 | quote }}
- name: MODERATION_MEDIA__QUALITY
  value: {{ .Values.media.quality | int64 | quote }}
- name: MODERATION_MEDIA__RETENTION_DAYS
  value: {{ .Values.media.retentionDays | quote }}
- name: MODERATION_OPS__ENABLED
  value: "true"
- name: MODERATION_OPS__PORT
  value: {{ .Values.ops.port | int64 | quote }}
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
{{- if $console }}
{{ include "moderation.consoleEnv" . }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The console's own settings, only in its container (added by moderation.env with "console" true, before extraEnv).
*/}}
{{- define "moderation.consoleEnv" -}}
- name: MODERATION_CONSOLE__HOST
  value: {{ .Values.console.host | quote }}
- name: MODERATION_CONSOLE__PORT
  value: {{ .Values.console.port | int64 | quote }}
- name: MODERATION_CONSOLE__OPS_PORT
  value: {{ .Values.console.opsPort | int64 | quote }}
- name: MODERATION_CONSOLE__SESSION_HOURS
  value: {{ .Values.console.sessionHours | quote }}
- name: MODERATION_CONSOLE__CLAIM_MINUTES
  value: {{ .Values.console.claimMinutes | quote }}
- name: MODERATION_CONSOLE__TRUSTED_PROXIES
  value: {{ .Values.console.trustedProxies | quote }}
- name: MODERATION_CONSOLE__IDENTITY_HEADER
  value: {{ .Values.console.identityHeader | quote }}
- name: MODERATION_CONSOLE__LOGIN_ATTEMPTS_PER_MINUTE
  value: {{ .Values.console.loginAttemptsPerMinute | int64 | quote }}
- name: MODERATION_CONSOLE__SEARCH
  value: {{ .Values.console.search.enabled | quote }}
- name: MODERATION_CONSOLE__SEARCH_REFRESH_S
  value: {{ .Values.console.search.refreshSeconds | quote }}
- name: MODERATION_CONSOLE__LABEL_FIRST
  value: {{ toJson (.Values.console.labelFirst | default list) | quote }}
{{- end }}

{{/*
The model volume (model.cache), for the pods that load the model: workers, and the console when it searches.
*/}}
{{- define "moderation.modelVolume" -}}
- name: model-cache
  {{- if eq .Values.model.cache.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ .Values.model.cache.existingClaim }}
    readOnly: {{ .Values.model.cache.readOnly }}
  {{- else if eq .Values.model.cache.type "hostPath" }}
  hostPath:
    path: {{ .Values.model.cache.hostPath }}
    type: Directory
  {{- else }}
  emptyDir:
    {{- if .Values.model.cache.sizeLimit }}
    sizeLimit: {{ .Values.model.cache.sizeLimit }}
    {{- end }}
  {{- end }}
{{- end }}

{{/*
The media volume (media.volume), for the pods that mount it: workers, console, media prune.
*/}}
{{- define "moderation.mediaVolume" -}}
- name: media
  {{- if eq .Values.media.volume.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ .Values.media.volume.existingClaim }}
  {{- else if .Values.media.volume.sizeLimit }}
  emptyDir:
    sizeLimit: {{ .Values.media.volume.sizeLimit }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}

{{/*
Name of a component's resource: <fullname>-<suffix>, the full name shortened so the whole fits in `max`
characters (63 for most names, 52 for a CronJob). Called with (dict "root" $ "suffix" "console" "max" 63).
*/}}
{{- define "moderation.componentName" -}}
{{- $room := sub (int .max) (add1 (len .suffix)) }}
{{- printf "%s-%s" (include "moderation.fullname" .root | trunc (int $room) | trimSuffix "-") .suffix }}
{{- end }}

{{/*
The policies volume: the policy files at the top, trained heads under heads/ (a ConfigMap key cannot hold a
slash, so the heads are projected there by `items`).
*/}}
{{- define "moderation.policiesVolume" -}}
- name: policies
  configMap:
    name: {{ include "moderation.fullname" . }}-policies
    {{- if .Values.policies.heads }}
    items:
      {{- range $name, $_ := .Values.policies.files }}
      - key: {{ $name }}
        path: {{ $name }}
      {{- end }}
      {{- range $name, $_ := .Values.policies.heads }}
      - key: {{ $name }}
        path: heads/{{ $name }}
      {{- end }}
    {{- end }}
{{- end }}
